// Admin protocol between shoalctl and shoald over a Unix stream socket: the
// client sends one JSON object on one line ({"cmd":"status"}), the daemon
// answers one JSON object on one line and closes. Callers are checked with
// SO_PEERCRED: root, or a member of the configured admin group.
#pragma once

#include <string>

namespace shoal::daemon {

// Client side, used by shoalctl: sends request and returns the response line
// in *response. False with *err on connection or protocol failure.
bool admin_call(const std::string& socket_path, const std::string& request, std::string* response,
                std::string* err, int timeout_ms = 5000);

}  // namespace shoal::daemon
