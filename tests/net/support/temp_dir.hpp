#pragma once
// A scratch directory for a test (key files, allow-lists), removed with what it holds.

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace mailroom::test {

struct temp_dir {
    std::filesystem::path path;
    /// Under the system's temporary folder, named `<prefix>-XXXXXX`.
    explicit temp_dir(const std::string& prefix = "mailroom-test") {
        std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
        char* made = ::mkdtemp(tmpl.data());
        if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
        path = made;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

}  // namespace mailroom::test
