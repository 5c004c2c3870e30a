// Socket addresses as text for logs and errors: "127.0.0.1:443",
// "[::1]:443". Header-only; used by the proxy, the redirect backends and
// their tests.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <string>

namespace shoal::util {

// The address alone ("127.0.0.1", "::1"), "" for other families.
inline std::string sockaddr_ip(const sockaddr_storage& ss) {
  char ip[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &ss, sizeof sin);
    inet_ntop(AF_INET, &sin.sin_addr, ip, sizeof ip);
  } else if (ss.ss_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &ss, sizeof sin6);
    inet_ntop(AF_INET6, &sin6.sin6_addr, ip, sizeof ip);
  }
  return ip;
}

// The port in host order, 0 for other families.
inline uint16_t sockaddr_port(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &ss, sizeof sin);
    return ntohs(sin.sin_port);
  }
  if (ss.ss_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &ss, sizeof sin6);
    return ntohs(sin6.sin6_port);
  }
  return 0;
}

// "ip:port", "[ip6]:port", or "(family N)".
inline std::string sockaddr_str(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return sockaddr_ip(ss) + ":" + std::to_string(sockaddr_port(ss));
  if (ss.ss_family == AF_INET6) return "[" + sockaddr_ip(ss) + "]:" + std::to_string(sockaddr_port(ss));
  return "(family " + std::to_string(ss.ss_family) + ")";
}

}  // namespace shoal::util
