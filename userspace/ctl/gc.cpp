// shoalctl gc: the store's garbage collection, now.
#include "shoal/ctl/ctl.h"

namespace shoal::ctl {

int cmd_gc(const Global& g, std::vector<std::string>& args) {
  if (!args.empty()) return usage_error("gc", "takes no arguments, got '" + args[0] + "'");
  Json o = json_null();
  // Deleting many task directories can take a while on a slow disk.
  int rc = admin(g, "gc", nullptr, &o, 300 * 1000);
  if (rc == kExitNoDaemon) return rc;
  if (g.json) {
    if (o) print_json(o.get());
    return rc;
  }
  if (rc != kExitOk) return rc;
  auto num = [&](const char* k) {
    const cJSON* v = cJSON_GetObjectItemCaseSensitive(o.get(), k);
    return cJSON_IsNumber(v) ? static_cast<uint64_t>(v->valuedouble) : 0;
  };
  const cJSON* removed = cJSON_GetObjectItemCaseSensitive(o.get(), "removed");
  Table t({"REMOVED", "SIZE", "URL"});
  const cJSON* e = nullptr;
  cJSON_ArrayForEach(e, removed) {
    const cJSON* id = cJSON_GetObjectItemCaseSensitive(e, "id");
    const cJSON* url = cJSON_GetObjectItemCaseSensitive(e, "url");
    const cJSON* size = cJSON_GetObjectItemCaseSensitive(e, "size");
    t.add({cJSON_IsString(id) ? std::string(id->valuestring).substr(0, 12) : "?",
           human_bytes(cJSON_IsNumber(size) ? static_cast<uint64_t>(size->valuedouble) : 0),
           cJSON_IsString(url) ? url->valuestring : ""});
  }
  if (t.rows() > 0) {
    t.print(stdout);
    printf("\n");
  }
  printf("freed %s in %zu task(s); the store holds %s in %llu task(s)\n",
         human_bytes(num("freed_bytes")).c_str(), t.rows(), human_bytes(num("store_bytes")).c_str(),
         static_cast<unsigned long long>(num("store_tasks")));
  return kExitOk;
}

}  // namespace shoal::ctl
