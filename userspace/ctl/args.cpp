// Command-line helpers shared by the commands.
#include "shoal/ctl/ctl.h"

namespace shoal::ctl {

int usage_error(const char* cmd, const std::string& msg) {
  fprintf(stderr, "shoalctl %s: %s (see shoalctl %s --help)\n", cmd, msg.c_str(), cmd);
  return kExitUsage;
}

bool option_value(const std::vector<std::string>& args, size_t* i, const std::string& name,
                  std::string* value) {
  const std::string& a = args[*i];
  if (a.size() > name.size() && a.compare(0, name.size(), name) == 0 && a[name.size()] == '=') {
    *value = a.substr(name.size() + 1);
    return true;
  }
  if (*i + 1 >= args.size()) {
    fprintf(stderr, "shoalctl: %s needs a value\n", name.c_str());
    return false;
  }
  *value = args[++*i];
  return true;
}

bool parse_header_arg(const std::string& s, std::string* name, std::string* value) {
  size_t colon = s.find(':');
  if (colon == std::string::npos || colon == 0) return false;
  if (s.find_first_of("\r\n") != std::string::npos) return false;
  std::string n = s.substr(0, colon);
  for (char c : n)
    if (c == ' ' || c == '\t') return false;
  std::string v = s.substr(colon + 1);
  size_t b = v.find_first_not_of(" \t");
  v = b == std::string::npos ? "" : v.substr(b);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.pop_back();
  *name = n;
  *value = v;
  return true;
}

}  // namespace shoal::ctl
