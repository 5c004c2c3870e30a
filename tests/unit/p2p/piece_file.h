// A scratch file of patterned bytes for the p2p tests' piece sources to
// serve, and the same bytes in memory to compare answers with.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

struct PieceFile {
  std::string data, path;
  int fd = -1;

  // 0, or -1 when the file cannot be made. tag names the file in /tmp.
  int make(const std::string& tag, size_t bytes) {
    std::string tmpl = "/tmp/shoal-" + tag + "-XXXXXX";
    fd = mkstemp(tmpl.data());
    if (fd < 0) return -1;
    path = tmpl;
    data.resize(bytes);
    for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<char>((i * 2654435761u) >> 11);
    return ::write(fd, data.data(), bytes) == static_cast<ssize_t>(bytes) ? 0 : -1;
  }
  void remove() {
    if (fd >= 0) ::close(fd);
    if (!path.empty()) ::unlink(path.c_str());
    fd = -1;
    path.clear();
  }
};
