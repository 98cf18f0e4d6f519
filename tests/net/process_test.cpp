// The multi-process test harness, on a tiny echo child (a raw ZeroMQ ROUTER): start it and
// exchange over loopback, stop and continue it, see it killed, restart it on the same port,
// and no child left behind when a test fails. Every wait is bounded.

#include "support/process.hpp"
#include "support/raw_dealer.hpp"

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <zmq.h>

#include <cerrno>
#include <csignal>
#include <optional>
#include <string>

#include <sys/wait.h>

using namespace mailroom::test;
using namespace std::chrono_literals;

namespace {

const std::string echo_child_path = MAILROOM_ECHO_CHILD;

// The endpoint in the child's "READY <endpoint>" line.
std::string ready_endpoint(child_process& c) {
    const std::string line = c.wait_for_line("READY ", 10s);
    return line.substr(6);
}

// A raw ZeroMQ DEALER connected to the child: what a peer does, without mailroom.
using dealer = mailroom::test::raw_dealer;

pid_t guarded_pid = -1;

void spawn_then_fail_an_assertion() {
    child_process c = child_process::spawn({echo_child_path});
    guarded_pid = c.pid();
    ready_endpoint(c);
    ASSERT_TRUE(false) << "a deliberate failure";
}

}  // namespace

TEST(process, a_child_starts_says_ready_with_the_port_it_bound_and_echoes_over_loopback) {
    child_process c = child_process::spawn({echo_child_path});
    const std::string endpoint = ready_endpoint(c);
    EXPECT_TRUE(endpoint.starts_with("tcp://127.0.0.1:")) << endpoint;
    EXPECT_NE(endpoint, "tcp://127.0.0.1:0");
    dealer d(endpoint);
    EXPECT_EQ(d.ask("hello"), "hello");
    EXPECT_EQ(d.ask("again"), "again");
    EXPECT_TRUE(c.running());
    EXPECT_FALSE(c.try_wait());
    // A clean exit is seen with its code.
    EXPECT_EQ(d.ask("exit 3"), "bye");
    const exit_status st = c.wait(10s);
    EXPECT_TRUE(st.exited);
    EXPECT_EQ(st.code, 3);
    EXPECT_EQ(st.describe(), "exited with 3");
}

TEST(process, a_stopped_child_answers_nothing_until_it_is_continued) {
    child_process c = child_process::spawn({echo_child_path});
    dealer d(ready_endpoint(c));
    ASSERT_EQ(d.ask("before"), "before");
    c.stop();
    d.send_now("while stopped");
    EXPECT_EQ(d.receive(300ms), std::nullopt) << "a stopped child answered";
    EXPECT_TRUE(c.running());
    c.resume();
    EXPECT_EQ(d.receive(10s), "while stopped");
    EXPECT_EQ(d.ask("after"), "after");
}

TEST(process, a_child_killed_with_sigkill_is_seen_killed_by_the_parent) {
    child_process c = child_process::spawn({echo_child_path});
    dealer d(ready_endpoint(c));
    ASSERT_EQ(d.ask("one"), "one");
    c.kill();
    const exit_status st = c.wait(10s);
    EXPECT_FALSE(st.exited);
    EXPECT_EQ(st.signal, SIGKILL);
    EXPECT_EQ(st.describe(), "killed by SIGKILL");
    EXPECT_FALSE(c.running());
    EXPECT_EQ(c.read_line(10s), std::nullopt);
    EXPECT_TRUE(c.at_eof());
    EXPECT_THROW(c.signal(SIGCONT), process_error) << "a reaped child's pid may be another's";
    EXPECT_EQ(d.ask("to nobody", 200ms), std::nullopt);
}

TEST(process, a_child_restarted_on_the_same_port_serves_the_same_peer_again) {
    child_process c = child_process::spawn({echo_child_path});
    const std::string endpoint = ready_endpoint(c);
    dealer d(endpoint);
    ASSERT_EQ(d.ask("first life"), "first life");
    c.kill();
    c.wait(10s);
    c = child_process::spawn({echo_child_path, endpoint});
    EXPECT_EQ(ready_endpoint(c), endpoint);
    // The dealer reconnects by itself (ZeroMQ's reconnect interval); what it sends now is answered.
    EXPECT_EQ(d.ask("second life"), "second life");
}

TEST(process, a_port_from_free_tcp_port_can_be_bound_by_a_child) {
    const int port = free_tcp_port();
    ASSERT_GT(port, 0);
    const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
    child_process c = child_process::spawn({echo_child_path, endpoint});
    EXPECT_EQ(ready_endpoint(c), endpoint);
}

TEST(process, the_guard_kills_and_reaps_its_child_when_an_assertion_fails) {
    EXPECT_FATAL_FAILURE(spawn_then_fail_an_assertion(), "a deliberate failure");
    ASSERT_GT(guarded_pid, 0);
    // Reaped, not a zombie: it is no longer a child of this process at all.
    errno = 0;
    EXPECT_EQ(::waitpid(guarded_pid, nullptr, WNOHANG), -1);
    EXPECT_EQ(errno, ECHILD);
}

TEST(process, bounded_waits_fail_with_a_typed_error_naming_the_child_and_what_it_printed) {
    child_process c = child_process::spawn({echo_child_path});
    ready_endpoint(c);
    try {
        c.wait(100ms);
        ADD_FAILURE() << "wait returned while the child runs";
    } catch (const process_error& e) {
        EXPECT_NE(std::string(e.what()).find("echo_child (pid " + std::to_string(c.pid()) + "): still running"),
                  std::string::npos)
            << e.what();
    }
    child_process talker = child_process::spawn({"/bin/sh", "-c", "echo hello; echo world; exec sleep 30"});
    try {
        talker.wait_for_line("READY", 300ms);
        ADD_FAILURE() << "no READY line was printed";
    } catch (const process_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("sh (pid"), std::string::npos) << what;
        EXPECT_NE(what.find("no line starting with 'READY' within 300 ms"), std::string::npos) << what;
        EXPECT_NE(what.find("hello"), std::string::npos) << what;
        EXPECT_NE(what.find("world"), std::string::npos) << what;
    }
    child_process quitter = child_process::spawn({"/bin/sh", "-c", "echo only"});
    EXPECT_THROW(quitter.wait_for_line("READY", 10s), process_error);
    EXPECT_TRUE(quitter.at_eof());
    EXPECT_TRUE(quitter.wait(10s).exited);
}

TEST(process, a_program_that_cannot_be_started_raises_a_typed_error_naming_it) {
    try {
        child_process::spawn({"/nonexistent/mailroom-child"});
        ADD_FAILURE() << "spawn of a missing program succeeded";
    } catch (const process_error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/mailroom-child"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
    }
    EXPECT_THROW(child_process::spawn({}), process_error);
}
