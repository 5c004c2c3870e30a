#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "shoal/daemon/admin.h"

namespace shoal::daemon {

bool admin_call(const std::string& socket_path, const std::string& request, std::string* response,
                std::string* err, int timeout_ms) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof sa.sun_path) {
    *err = "admin socket path too long: " + socket_path;
    return false;
  }
  memcpy(sa.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = std::string("socket: ") + strerror(errno);
    return false;
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int e = errno;
    *err = "cannot reach shoald at " + socket_path + ": " + strerror(e);
    if (e == ENOENT || e == ECONNREFUSED) *err += " (is shoald running? is --admin-socket right?)";
    if (e == EACCES) *err += " (run as root or as a member of the admin group)";
    close(fd);
    return false;
  }
  std::string line = request + "\n";
  size_t off = 0;
  while (off < line.size()) {
    // MSG_NOSIGNAL: a daemon that refuses the caller answers and closes at
    // once, maybe before the request is written; that must not kill us
    // with SIGPIPE, and its answer is still queued for the read below.
    ssize_t w = send(fd, line.data() + off, line.size() - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) break;
      *err = std::string("write: ") + strerror(errno);
      close(fd);
      return false;
    }
    off += static_cast<size_t>(w);
  }
  response->clear();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[4096];
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      *err = "shoald did not answer within " + std::to_string(timeout_ms) + " ms";
      close(fd);
      return false;
    }
    pollfd p{fd, POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(left.count()));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET && !response->empty()) break;  // the answer came before the reset
      *err = std::string("read: ") + strerror(errno);
      close(fd);
      return false;
    }
    if (n == 0) break;
    response->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  while (!response->empty() && (response->back() == '\n' || response->back() == '\r')) response->pop_back();
  if (response->empty()) {
    *err = "shoald closed the admin connection without answering";
    return false;
  }
  return true;
}

}  // namespace shoal::daemon
