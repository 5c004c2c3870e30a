// shoalctl tasks: the daemon's downloads in flight and its stored tasks.
#include <algorithm>
#include <cstdlib>

#include "shoal/ctl/ctl.h"

namespace shoal::ctl {

namespace {

double num(const cJSON* o, const char* k, double dflt = 0) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

const char* str(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : "";
}

bool has(const cJSON* o, const char* k) { return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, k)); }

std::string bytes_or_dash(const cJSON* o, const char* k) {
  return has(o, k) ? human_bytes(static_cast<uint64_t>(num(o, k))) : "-";
}

bool matches(const cJSON* t, const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) return true;
  std::string id = str(t, "id");
  for (std::string p : prefixes) {
    if (p.rfind("sha256:", 0) == 0) p = p.substr(7);
    if (id.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

// Keeps the entries of array key that match; at most limit (0: all).
void filter(cJSON* o, const char* key, const std::vector<std::string>& prefixes, size_t limit) {
  cJSON* arr = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(arr)) return;
  cJSON* kept = cJSON_CreateArray();
  size_t n = 0;
  cJSON* t = nullptr;
  cJSON_ArrayForEach(t, arr) {
    if (!matches(t, prefixes)) continue;
    if (limit && n >= limit) break;
    cJSON_AddItemToArray(kept, cJSON_Duplicate(t, true));
    ++n;
  }
  cJSON_ReplaceItemInObjectCaseSensitive(o, key, kept);
}

std::string short_id(const std::string& id) { return id.size() > 12 ? id.substr(0, 12) : id; }

}  // namespace

int cmd_tasks(const Global& g, std::vector<std::string>& args) {
  bool active = true, stored = true;
  long limit = -1;
  std::vector<std::string> prefixes;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--active") {
      stored = false;
    } else if (a == "--stored") {
      active = false;
    } else if (a == "--limit" || a.rfind("--limit=", 0) == 0) {
      std::string v;
      if (!option_value(args, &i, "--limit", &v)) return kExitUsage;
      char* end = nullptr;
      limit = strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || limit < 0)
        return usage_error("tasks", "--limit wants a number >= 0, got '" + v + "'");
    } else if (!a.empty() && a[0] == '-') {
      return usage_error("tasks", "unknown option '" + a + "'");
    } else {
      prefixes.push_back(a);
    }
  }
  if (!active && !stored) return usage_error("tasks", "--active and --stored exclude each other");
  Json o = json_null();
  int rc = admin(g, "tasks", nullptr, &o, 15000);
  if (rc != kExitOk) {
    if (rc == kExitFailed && g.json && o) print_json(o.get());
    return rc;
  }
  size_t lim = limit >= 0 ? static_cast<size_t>(limit) : (g.json ? 0 : 50);
  if (!active) cJSON_ReplaceItemInObjectCaseSensitive(o.get(), "active", cJSON_CreateArray());
  if (!stored) cJSON_ReplaceItemInObjectCaseSensitive(o.get(), "stored", cJSON_CreateArray());
  size_t stored_total =
      static_cast<size_t>(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o.get(), "stored")));
  filter(o.get(), "active", prefixes, 0);
  filter(o.get(), "stored", prefixes, lim);
  if (g.json) {
    print_json(o.get());
    return kExitOk;
  }
  Table t({"ID", "STATE", "SIZE", "PROGRESS", "ORIGIN", "PEER", "REUSE", "AGE", "URL"});
  const cJSON* e = nullptr;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o.get(), "active")) {
    double size = num(e, "size"), done = num(e, "done");
    std::string prog = size > 0 ? std::to_string(static_cast<int>(done * 100 / size)) + "%" : "-";
    t.add({short_id(str(e, "id")), str(e, "state"), size > 0 ? human_bytes(static_cast<uint64_t>(size)) : "?",
           prog, bytes_or_dash(e, "bytes_origin"), bytes_or_dash(e, "bytes_peer"), "-",
           human_age(num(e, "age_s")), str(e, "url")});
  }
  size_t shown_stored = 0;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o.get(), "stored")) {
    ++shown_stored;
    std::string reuse =
        has(e, "bytes_reuse") ? human_bytes(static_cast<uint64_t>(num(e, "bytes_reuse"))) : "-";
    if (has(e, "reuse_count") && num(e, "reuse_count") > 0)
      reuse += " (" + std::to_string(static_cast<long>(num(e, "reuse_count"))) + "x)";
    t.add({short_id(str(e, "id")), "stored", human_bytes(static_cast<uint64_t>(num(e, "size"))), "100%",
           bytes_or_dash(e, "bytes_origin"), bytes_or_dash(e, "bytes_peer"), reuse,
           human_age(num(e, "age_s")), str(e, "url")});
  }
  if (t.rows() > 0) t.print(stdout);
  const cJSON* st = cJSON_GetObjectItemCaseSensitive(o.get(), "store");
  size_t n_active =
      static_cast<size_t>(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o.get(), "active")));
  printf("%sstore %s: %.0f tasks, %s", t.rows() > 0 ? "\n" : "", str(st, "dir"), num(st, "tasks"),
         human_bytes(static_cast<uint64_t>(num(st, "bytes"))).c_str());
  if (num(st, "quota") > 0)
    printf(" of %s quota", human_bytes(static_cast<uint64_t>(num(st, "quota"))).c_str());
  printf("; %zu downloading", n_active);
  if (prefixes.empty() && shown_stored < stored_total)
    printf("; %zu of %zu stored tasks shown (--limit)", shown_stored, stored_total);
  printf("\n");
  return kExitOk;
}

}  // namespace shoal::ctl
