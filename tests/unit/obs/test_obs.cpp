// Unit tests for the obs module: JSON-line logging and Prometheus metrics.
#include <cjson/cJSON.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../cmocka_cpp.h"
#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"

namespace {

std::string make_tmpdir() {
  char tmpl[] = "/tmp/shoal-obs-XXXXXX";
  char* d = mkdtemp(tmpl);
  assert_non_null(d);
  return d;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) out.push_back(line);
  return out;
}

void test_log_lines_are_json(void**) {
  std::string dir = make_tmpdir();
  std::string err;
  assert_true(shoal::obs::log_open(dir + "/logs", &err));
  shoal::obs::log_set_level(shoal::obs::Level::Info);
  shoal::obs::log_info("peer task done, cost: 12ms").str("peer", "p1").str("task", "t\"1").num("size", 42);
  shoal::obs::log_debug("hidden").str("x", "y");
  shoal::obs::log_warn("careful").boolean("flag", true).dbl("ratio", 0.5);
  // Every byte a client may put in a path or header round-trips.
  std::string nasty = "q\"b\\s/\n\r\t\x01\x1f\x7f caf\xc3\xa9";
  shoal::obs::log_info("odd")
      .str("path", nasty)
      .num("neg", -9007199254740993LL)
      .dbl("tenth", 0.1)
      .dbl("nan", std::nan(""));
  shoal::obs::log_flush();
  auto lines = read_lines(dir + "/logs/core.log");
  assert_int_equal(lines.size(), 3);
  cJSON* odd = cJSON_Parse(lines[2].c_str());
  assert_non_null(odd);
  assert_string_equal(cJSON_GetObjectItem(odd, "path")->valuestring, nasty.c_str());
  assert_non_null(strstr(lines[2].c_str(), "\"neg\":-9007199254740993"));
  assert_true(cJSON_GetObjectItem(odd, "tenth")->valuedouble == 0.1);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(odd, "nan")));
  cJSON_Delete(odd);
  cJSON* o = cJSON_Parse(lines[0].c_str());
  assert_non_null(o);
  assert_string_equal(cJSON_GetObjectItem(o, "msg")->valuestring, "peer task done, cost: 12ms");
  assert_string_equal(cJSON_GetObjectItem(o, "level")->valuestring, "info");
  assert_string_equal(cJSON_GetObjectItem(o, "task")->valuestring, "t\"1");
  assert_int_equal(cJSON_GetObjectItem(o, "size")->valueint, 42);
  assert_non_null(cJSON_GetObjectItem(o, "ts"));
  cJSON_Delete(o);
  // The grep the Dragonfly guide tells users to run must keep working.
  assert_non_null(strstr(lines[0].c_str(), "\"msg\":\"peer task done, cost: 12ms\""));
  shoal::obs::log_close();
  system(("rm -rf " + dir).c_str());
}

void test_log_reopen_after_rotation(void**) {
  std::string dir = make_tmpdir();
  std::string err;
  assert_true(shoal::obs::log_open(dir, &err));
  shoal::obs::log_info("before");
  shoal::obs::log_flush();
  assert_int_equal(rename((dir + "/core.log").c_str(), (dir + "/core.log.1").c_str()), 0);
  shoal::obs::log_info("still old file");
  shoal::obs::log_flush();
  assert_true(shoal::obs::log_reopen(&err));
  shoal::obs::log_info("after");
  shoal::obs::log_flush();
  assert_int_equal(read_lines(dir + "/core.log.1").size(), 2);
  auto fresh = read_lines(dir + "/core.log");
  assert_int_equal(fresh.size(), 1);
  assert_non_null(strstr(fresh[0].c_str(), "\"after\""));
  shoal::obs::log_close();
  system(("rm -rf " + dir).c_str());
}

void test_log_open_fails_clearly(void**) {
  std::string err;
  assert_false(shoal::obs::log_open("/proc/1/no-such-dir/x", &err));
  assert_non_null(strstr(err.c_str(), "/proc/1/no-such-dir"));
}

void test_parse_level(void**) {
  shoal::obs::Level l;
  assert_true(shoal::obs::parse_level("warning", &l));
  assert_int_equal(static_cast<int>(l), static_cast<int>(shoal::obs::Level::Warn));
  assert_true(shoal::obs::parse_level("debug", &l));
  assert_false(shoal::obs::parse_level("loud", &l));
}

void test_metrics_render(void**) {
  shoal::obs::Registry r;
  r.counter("shoal_requests_total", "Requests", "route=\"p2p\"").inc(3);
  r.counter("shoal_requests_total", "Requests", "route=\"direct\"").inc();
  r.counter("shoal_requests_total", "Requests", "route=\"p2p\"").inc();  // same series
  r.gauge("shoal_connections_active", "Open").set(7);
  auto& h = r.histogram("shoal_request_duration_seconds", "Durations", "", {0.1, 1});
  h.observe(0.05);
  h.observe(0.5);
  h.observe(3);
  std::string text = r.render();
  assert_non_null(strstr(text.c_str(), "# TYPE shoal_requests_total counter\n"));
  assert_non_null(strstr(text.c_str(), "shoal_requests_total{route=\"p2p\"} 4\n"));
  assert_non_null(strstr(text.c_str(), "shoal_requests_total{route=\"direct\"} 1\n"));
  assert_non_null(strstr(text.c_str(), "shoal_connections_active 7\n"));
  // Buckets are cumulative and end with +Inf = count.
  assert_non_null(
      strstr(text.c_str(), "shoal_request_duration_seconds_bucket{le=\"0.10000000000000001\"} 1\n"));
  assert_non_null(strstr(text.c_str(), "shoal_request_duration_seconds_bucket{le=\"1\"} 2\n"));
  assert_non_null(strstr(text.c_str(), "shoal_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
  assert_non_null(strstr(text.c_str(), "shoal_request_duration_seconds_count 3\n"));
  assert_non_null(strstr(text.c_str(), "shoal_request_duration_seconds_sum 3.5499999999999998\n"));
  auto snap = r.snapshot();
  assert_int_equal(snap.size(), 3);
}

void test_metrics_concurrent(void**) {
  shoal::obs::Registry r;
  auto& c = r.counter("shoal_x_total", "x");
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&] {
      for (int k = 0; k < 100000; ++k) c.inc();
    });
  for (auto& t : ts) t.join();
  assert_int_equal(c.value(), 400000);
}

}  // namespace

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_lines_are_json),     cmocka_unit_test(test_log_reopen_after_rotation),
      cmocka_unit_test(test_log_open_fails_clearly), cmocka_unit_test(test_parse_level),
      cmocka_unit_test(test_metrics_render),         cmocka_unit_test(test_metrics_concurrent),
  };
  return cmocka_run_group_tests_name("obs", tests, nullptr, nullptr);
}
