// Unit tests for the task store: round trips, cleanup at open, validation,
// GC, concurrency, crash safety (children SIGKILLed at every commit step and
// at random times) and a full disk (a 1 MiB tmpfs).
#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <mbedtls/sha256.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shoal/task/store.h"

// Last: cmocka.h defines macros (fail, skip) that clash with C++ names.
#include "../cmocka_cpp.h"

namespace {

using shoal::task::GcResult;
using shoal::task::Sha256;
using shoal::task::Store;
using shoal::task::TaskMeta;
using shoal::task::Writer;

std::string make_tmpdir() {
  char tmpl[] = "/tmp/shoal-store-XXXXXX";
  char* d = mkdtemp(tmpl);
  assert_non_null(d);
  return d;
}

int rm_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }
void rm_rf(const std::string& path) { nftw(path.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

void write_file(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  assert_non_null(f);
  assert_int_equal(std::fwrite(text.data(), 1, text.size(), f), text.size());
  assert_int_equal(std::fclose(f), 0);
}

std::string read_path(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return out;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

std::string read_fd(int fd) {
  std::string out;
  char buf[65536];
  off_t off = 0;
  ssize_t n;
  while ((n = ::pread(fd, buf, sizeof buf, off)) > 0) {
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
  return out;
}

size_t count_entries(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (struct dirent* e = readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        names.emplace_back(e->d_name);
    closedir(d);
  }
  return names.size();
}

std::string hex(const uint8_t* p, size_t n) {
  std::string s;
  char b[3];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", p[i]);
    s += b;
  }
  return s;
}

Sha256 sha256(const std::string& s) {
  Sha256 h;
  mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(s.data()), s.size(), h.data(), 0);
  return h;
}

std::string id_for(uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 1);
  uint8_t b[32];
  for (uint8_t& x : b) x = static_cast<uint8_t>(rng());
  return hex(b, sizeof b);
}

std::string data_for(uint64_t seed, size_t len) {
  std::mt19937_64 rng(seed);
  std::string s(len, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Metadata the engine would build after verifying data.
TaskMeta meta_for(const std::string& id, const std::string& data, uint32_t piece_size = 0) {
  TaskMeta m;
  m.id = id;
  m.url = "https://registry.example/v2/lib/blobs/sha256:" + id + "?X-Amz-Signature=secret#frag";
  m.digest = "sha256:" + hex(sha256(data).data(), 32);
  m.length = data.size();
  m.piece_size = piece_size != 0 ? piece_size : shoal::task::piece_size_for(m.length);
  for (size_t off = 0; off < data.size(); off += m.piece_size)
    m.pieces.push_back(sha256(data.substr(off, m.piece_size)));
  m.headers = {{"Content-Type", "application/octet-stream"}, {"Docker-Content-Digest", m.digest}};
  return m;
}

std::unique_ptr<Store> open_store(const std::string& dir) {
  std::unique_ptr<Store> s;
  std::string err;
  int r = Store::open(dir, &s, &err);
  if (r != 0) print_error("open %s: %d %s\n", dir.c_str(), r, err.c_str());
  assert_int_equal(r, 0);
  return s;
}

// Writes data in chunks and commits; returns commit()'s result.
int put(Store* s, const std::string& id, const std::string& data, size_t chunk = 16384) {
  std::unique_ptr<Writer> w;
  std::string err;
  int r = s->begin(id, &w, &err);
  if (r != 0) return r;
  for (size_t off = 0; off < data.size(); off += chunk) {
    r = w->write(data.data() + off, std::min(chunk, data.size() - off), off, &err);
    if (r != 0) return r;
  }
  return w->commit(meta_for(id, data), &err);
}

std::string get(Store* s, const std::string& id) {
  std::string err;
  int fd = s->open_data(id, &err);
  if (fd < 0) return "<" + std::to_string(fd) + ">";
  std::string out = read_fd(fd);
  ::close(fd);
  return out;
}

// The disk holds exactly the index: tmp/ empty, every tasks/<ab>/<id> is
// indexed and marked.
void assert_disk_matches(Store* s) {
  assert_int_equal(count_entries(s->dir() + "/tmp"), 0);
  size_t dirs = 0;
  for (int i = 0; i < 256; ++i) {
    char shard[3];
    std::snprintf(shard, sizeof shard, "%02x", i);
    std::string sd = s->dir() + "/tasks/" + shard;
    if (DIR* d = opendir(sd.c_str())) {
      while (struct dirent* e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        ++dirs;
        assert_true(s->lookup(e->d_name, nullptr));
        assert_true(exists(sd + "/" + e->d_name + "/verified"));
      }
      closedir(d);
    }
  }
  assert_int_equal(dirs, s->task_count());
}

int64_t g_now = 1000;
int64_t test_clock() { return g_now; }

// ---------------------------------------------------------------------------

void test_piece_helpers(void**) {
  using shoal::task::piece_count;
  using shoal::task::piece_size_for;
  const uint64_t MiB = 1u << 20;
  assert_int_equal(piece_size_for(0), 2 * MiB);
  assert_int_equal(piece_size_for(1), 2 * MiB);
  assert_int_equal(piece_size_for(128 * MiB), 2 * MiB);
  assert_int_equal(piece_size_for(500 * 2 * MiB), 2 * MiB);
  assert_int_equal(piece_size_for(500 * 2 * MiB + 1), 4 * MiB);
  assert_int_equal(piece_size_for(500 * 4 * MiB), 4 * MiB);
  assert_int_equal(piece_size_for(500 * 4 * MiB + 1), 8 * MiB);
  assert_int_equal(piece_size_for(500 * 32 * MiB), 32 * MiB);
  assert_int_equal(piece_size_for(500 * 64 * MiB + 1), 64 * MiB);
  assert_int_equal(piece_size_for(UINT64_MAX), 64 * MiB);
  assert_int_equal(piece_count(0, 4 * MiB), 0);
  assert_int_equal(piece_count(1, 4 * MiB), 1);
  assert_int_equal(piece_count(4 * MiB, 4 * MiB), 1);
  assert_int_equal(piece_count(4 * MiB + 1, 4 * MiB), 2);
  assert_int_equal(piece_count(10, 0), 0);
}

// What a reader of a direct Writer's fd sees of [0, n): whole aligned blocks
// read into an aligned buffer (O_DIRECT refuses anything else).
std::string read_aligned(int fd, size_t n) {
  constexpr size_t kA = shoal::task::kDirectAlign;
  size_t span = (n + kA - 1) / kA * kA;
  char* buf = static_cast<char*>(std::aligned_alloc(kA, span + kA));
  assert_non_null(buf);
  size_t got = 0;
  while (got < span) {
    ssize_t r = ::pread(fd, buf + got, span - got, static_cast<off_t>(got));
    assert_true(r >= 0);
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  std::string out(buf, got < n ? got : n);
  std::free(buf);
  return out;
}

// A direct Writer: sequential writes of every awkward size (a byte, a block
// and one either side, several times its staging buffer), each readable in
// full through an O_DIRECT reader right after it returns (and its whole
// blocks through a page-cache reader); block-aligned
// pieces out of order on a second writer; commit() cuts the padding off.
void test_direct_writes(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir + "/data");
    std::string id = id_for(41), err;
    const size_t sizes[] = {1, 4095, 1, 4097, 8192, 3, 100000, 1536 * 1024, 7, 2 * 1024 * 1024 + 5, 4096, 12};
    size_t total = 0;
    for (size_t n : sizes) total += n;
    std::string data = data_for(41, total);
    std::unique_ptr<Writer> w;
    assert_int_equal(s->begin(id, &w, &err, true), 0);
    std::printf("# direct writes on %s: %s\n", dir.c_str(), w->direct() ? "O_DIRECT" : "buffered (fallback)");
    int rfd = w->open_data(&err, true);   // around the page cache
    int bfd = w->open_data(&err, false);  // through it, whole blocks only
    assert_true(rfd >= 0);
    assert_true(bfd >= 0);
    size_t at = 0;
    for (size_t n : sizes) {
      assert_int_equal(w->write(data.data() + at, n, at, &err), 0);
      at += n;
      assert_true(read_aligned(rfd, at) == data.substr(0, at));
      size_t whole = at / shoal::task::kDirectAlign * shoal::task::kDirectAlign;
      assert_true(read_fd(bfd).substr(0, whole) == data.substr(0, whole));
    }
    assert_int_equal(w->commit(meta_for(id, data, 1 << 20), &err), 0);
    w.reset();
    assert_true(get(s.get(), id) == data);
    assert_true(read_aligned(rfd, data.size() + 8192) == data);  // no padding left past the end
    assert_true(read_fd(bfd) == data);
    ::close(rfd);
    ::close(bfd);

    // Pieces of 64 KiB, last one short, written in reverse order.
    std::string id2 = id_for(42), data2 = data_for(42, 10 * 65536 + 999);
    assert_int_equal(s->begin(id2, &w, &err, true), 0);
    for (size_t i = 11; i-- > 0;) {
      size_t off = i * 65536, n = std::min<size_t>(65536, data2.size() - off);
      assert_int_equal(w->write(data2.data() + off, n, off, &err), 0);
    }
    assert_int_equal(w->commit(meta_for(id2, data2, 65536), &err), 0);
    w.reset();
    assert_true(get(s.get(), id2) == data2);
    TaskMeta m;
    assert_true(s->lookup(id2, &m));
    assert_int_equal(m.length, data2.size());

    // A short object aborted: nothing of it stays.
    std::string id3 = id_for(43), data3 = data_for(43, 10);
    assert_int_equal(s->begin(id3, &w, &err, true), 0);
    assert_int_equal(w->write(data3.data(), data3.size(), 0, &err), 0);
    w->abort();
    w.reset();
    assert_false(s->lookup(id3, nullptr));
    assert_int_equal(count_entries(dir + "/data/tmp"), 0);
  }
  rm_rf(dir);
}

void test_round_trip(void**) {
  std::string dir = make_tmpdir();
  g_now = 1000;
  {
    auto s = open_store(dir + "/data");
    s->set_clock_for_test(test_clock);
    std::string id = id_for(1), data = data_for(1, 100000), err;
    std::unique_ptr<Writer> w;
    assert_int_equal(s->begin(id, &w, &err), 0);
    assert_string_equal(w->id().c_str(), id.c_str());
    // Out of order, as parallel piece fetches would write.
    assert_int_equal(w->write(data.data() + 60000, 40000, 60000, &err), 0);
    assert_int_equal(w->write(data.data(), 60000, 0, &err), 0);
    int rfd = w->open_data(&err);
    assert_true(rfd >= 0);
    assert_false(s->lookup(id, nullptr));  // not visible before commit
    assert_int_equal(s->open_data(id, &err), -ENOENT);
    assert_int_equal(w->commit(meta_for(id, data, 16384), &err), 0);
    assert_true(read_fd(rfd) == data);  // the in-progress fd survives the commit
    ::close(rfd);
    assert_int_equal(w->open_data(&err), -EINVAL);
    w.reset();

    TaskMeta m;
    assert_true(s->lookup(id, &m));
    assert_string_equal(m.id.c_str(), id.c_str());
    assert_string_equal(m.url.c_str(), ("https://registry.example/v2/lib/blobs/sha256:" + id).c_str());
    assert_int_equal(m.length, data.size());
    assert_int_equal(m.piece_size, 16384);
    assert_int_equal(m.pieces.size(), 7);
    assert_true(m.pieces[6] == sha256(data.substr(6 * 16384)));
    assert_int_equal(m.headers.size(), 2);
    assert_int_equal(m.created, 1000);
    assert_int_equal(m.last_access, 1000);
    assert_true(get(s.get(), id) == data);
    assert_int_equal(s->task_count(), 1);
    assert_int_equal(s->total_bytes(), data.size());
    assert_int_equal(s->list().size(), 1);

    std::string td = dir + "/data/tasks/" + id.substr(0, 2) + "/" + id;
    assert_true(read_path(td + "/data") == data);
    assert_true(exists(td + "/verified"));
    assert_string_equal(read_path(dir + "/data/version").c_str(), "1\n");
    cJSON* j = cJSON_Parse(read_path(td + "/meta.json").c_str());
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "digest")->valuestring, m.digest.c_str());
    assert_null(std::strstr(cJSON_GetObjectItem(j, "url")->valuestring, "Signature"));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "pieces")), 7);
    cJSON_Delete(j);
    assert_disk_matches(s.get());

    // An empty object is a task too.
    std::string eid = id_for(2);
    assert_int_equal(put(s.get(), eid, ""), 0);
    assert_true(s->lookup(eid, &m));
    assert_int_equal(m.pieces.size(), 0);
    assert_true(get(s.get(), eid).empty());
  }
  rm_rf(dir);
}

void test_abort_leaves_nothing(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir);
    std::string id = id_for(3), err;
    std::unique_ptr<Writer> w;
    assert_int_equal(s->begin(id, &w, &err), 0);
    assert_int_equal(w->write("hello", 5, 0, &err), 0);
    assert_int_equal(count_entries(dir + "/tmp"), 1);
    w->abort();
    w->abort();  // idempotent
    assert_int_equal(count_entries(dir + "/tmp"), 0);
    assert_int_equal(w->write("x", 1, 0, &err), -EINVAL);
    assert_int_equal(w->commit(meta_for(id, "hello"), &err), -EINVAL);
    w.reset();
    // Destroying an uncommitted Writer aborts it.
    assert_int_equal(s->begin(id, &w, &err), 0);
    assert_int_equal(w->write("hello", 5, 0, &err), 0);
    w.reset();
    assert_int_equal(count_entries(dir + "/tmp"), 0);
    assert_false(s->lookup(id, nullptr));
    assert_int_equal(s->task_count(), 0);
    assert_disk_matches(s.get());
  }
  rm_rf(dir);
}

void test_reopen_finds_task_and_access_time(void**) {
  std::string dir = make_tmpdir();
  std::string id = id_for(4), data = data_for(4, 5000);
  g_now = 100;
  {
    auto s = open_store(dir);
    s->set_clock_for_test(test_clock);
    assert_int_equal(put(s.get(), id, data), 0);
    g_now = 5000;
    assert_true(s->touch(id));
    assert_false(s->touch(id_for(99)));
  }  // ~Store persists the touch
  {
    auto s = open_store(dir);
    TaskMeta m;
    assert_true(s->lookup(id, &m));
    assert_int_equal(m.created, 100);
    assert_int_equal(m.last_access, 5000);
    assert_true(m.pieces == meta_for(id, data).pieces);
    assert_true(m.headers == meta_for(id, data).headers);
    assert_true(get(s.get(), id) == data);
    assert_int_equal(s->total_bytes(), data.size());
    assert_int_equal(s->discarded_at_open(), 0);
    // gc() persists touches too.
    s->set_clock_for_test(test_clock);
    g_now = 7000;
    s->touch(id);
    assert_int_equal(s->gc(0, 0, 7000).ids.size(), 0);
    struct stat st {};
    assert_int_equal(::stat((dir + "/tasks/" + id.substr(0, 2) + "/" + id + "/verified").c_str(), &st), 0);
    assert_int_equal(st.st_mtim.tv_sec, 7000);
  }
  rm_rf(dir);
}

void test_duplicate_commit(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir);
    std::string id = id_for(5), a = data_for(5, 3000), b = data_for(6, 3000), err;
    std::unique_ptr<Writer> w1, w2;
    assert_int_equal(s->begin(id, &w1, &err), 0);
    assert_int_equal(s->begin(id, &w2, &err), 0);
    assert_int_equal(w1->write(a.data(), a.size(), 0, &err), 0);
    assert_int_equal(w2->write(b.data(), b.size(), 0, &err), 0);
    assert_int_equal(w1->commit(meta_for(id, a), &err), 0);
    assert_int_equal(w2->commit(meta_for(id, b), &err), 0);  // discarded, still success
    w1.reset();
    w2.reset();
    assert_true(get(s.get(), id) == a);
    assert_int_equal(s->task_count(), 1);
    assert_int_equal(s->total_bytes(), a.size());
    assert_int_equal(s->begin(id, &w1, &err), -EEXIST);
    assert_disk_matches(s.get());
  }
  rm_rf(dir);
}

void test_invalid_ids(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir);
    std::string good = id_for(7);
    std::string upper = good;
    std::transform(upper.begin(), upper.end(), upper.begin(),
                   [](char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); });
    std::string traversal = "../../../../etc/passwd";
    traversal.resize(64, 'a');
    std::string nul = good;
    nul[10] = '\0';
    const std::vector<std::string> bad = {"",        "ab", good.substr(0, 63),   good + "0", upper,
                                          traversal, nul,  "zz" + good.substr(2)};
    for (const std::string& id : bad) {
      std::unique_ptr<Writer> w;
      std::string err;
      assert_false(shoal::task::valid_task_id(id));
      assert_int_equal(s->begin(id, &w, &err), -EINVAL);
      assert_non_null(std::strstr(err.c_str(), "invalid task id"));
      assert_null(w.get());
      assert_false(s->lookup(id, nullptr));
      assert_int_equal(s->open_data(id, &err), -EINVAL);
      assert_int_equal(s->pin(id), -EINVAL);
      assert_false(s->touch(id));
    }
    assert_true(shoal::task::valid_task_id(good));
    assert_int_equal(s->pin(good), -ENOENT);
    assert_int_equal(count_entries(dir + "/tmp"), 0);
  }
  rm_rf(dir);
}

void test_commit_validates_meta(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir);
    std::string id = id_for(8), data = data_for(8, 1000), err;
    struct Case {
      const char* name;
      void (*mutate)(TaskMeta*);
    };
    const Case cases[] = {
        {"length", [](TaskMeta* m) { m->length += 1; }},
        {"pieces", [](TaskMeta* m) { m->pieces.push_back(Sha256{}); }},
        {"piece size", [](TaskMeta* m) { m->piece_size = 0; }},
        {"digest", [](TaskMeta* m) { m->digest = "md5:abc"; }},
        {"id", [](TaskMeta* m) { m->id = id_for(9); }},
    };
    for (const Case& c : cases) {
      std::unique_ptr<Writer> w;
      assert_int_equal(s->begin(id, &w, &err), 0);
      assert_int_equal(w->write(data.data(), data.size(), 0, &err), 0);
      TaskMeta m = meta_for(id, data);
      c.mutate(&m);
      err.clear();
      if (w->commit(m, &err) != -EINVAL) fail_msg("case %s: commit accepted", c.name);
      assert_non_null(std::strstr(err.c_str(), (dir + "/tmp/" + id).c_str()));
      // The writer is now unusable and says so.
      assert_int_equal(w->write("x", 1, 0, &err), -EINVAL);
      assert_int_equal(w->commit(meta_for(id, data), &err), -EINVAL);
      w->abort();
      assert_false(s->lookup(id, nullptr));
    }
    assert_disk_matches(s.get());
  }
  rm_rf(dir);
}

void test_open_cleans_debris(void**) {
  std::string dir = make_tmpdir();
  std::string good = id_for(10), gdata = data_for(10, 4000);
  {
    auto s = open_store(dir);
    assert_int_equal(put(s.get(), good, gdata), 0);
  }
  // Forge every kind of debris a crash or a bug could leave.
  auto task_dir = [&](const std::string& id) { return dir + "/tasks/" + id.substr(0, 2) + "/" + id; };
  auto forge = [&](uint64_t seed, const std::string& marker, const std::string& meta, size_t data_len) {
    std::string id = id_for(seed), data = data_for(seed, 4000);
    mkdir(task_dir(id).c_str(), 0700);
    write_file(task_dir(id) + "/data", data.substr(0, data_len));
    if (!meta.empty()) write_file(task_dir(id) + "/meta.json", meta);
    if (marker != "-") write_file(task_dir(id) + "/verified", marker);
    return id;
  };
  std::string good_meta = read_path(task_dir(good) + "/meta.json");
  std::string good_marker = read_path(task_dir(good) + "/verified");
  auto retarget = [&](const std::string& text, const std::string& id) {
    std::string t = text;
    for (size_t p; (p = t.find(good)) != std::string::npos;) t.replace(p, good.size(), id);
    return t;
  };
  std::vector<std::string> junk;
  std::string id;
  id = id_for(11);  // no marker (crash between rename and marker)
  junk.push_back(forge(11, "-", retarget(good_meta, id), 4000));
  id = id_for(12);  // empty (torn) marker
  junk.push_back(forge(12, "", retarget(good_meta, id), 4000));
  id = id_for(13);  // meta.json does not parse
  junk.push_back(forge(13, retarget(good_marker, id), "{\"id\":", 4000));
  id = id_for(14);  // data shorter than meta's length
  junk.push_back(forge(14, retarget(good_marker, id), retarget(good_meta, id), 3999));
  id = id_for(15);  // meta.json of another task
  junk.push_back(forge(15, retarget(good_marker, id), good_meta, 4000));
  // A task in the wrong shard, a bad shard name, a stray file, tmp/ leftovers.
  std::string wrong = id_for(16);
  std::string wrong_dir = dir + "/tasks/" + (wrong.substr(0, 2) == "00" ? "01" : "00") + "/" + wrong;
  mkdir(wrong_dir.c_str(), 0700);
  mkdir((dir + "/tasks/zz").c_str(), 0700);
  write_file(dir + "/tasks/zz/x", "x");
  write_file(dir + "/tasks/" + good.substr(0, 2) + "/stray", "x");
  mkdir((dir + "/tmp/" + id_for(17) + ".1234").c_str(), 0700);
  write_file(dir + "/tmp/" + id_for(17) + ".1234/data", "partial");
  write_file(dir + "/tmp/loose", "x");
  {
    auto s = open_store(dir);
    assert_int_equal(s->task_count(), 1);
    assert_true(get(s.get(), good) == gdata);
    for (const std::string& j : junk) {
      assert_false(s->lookup(j, nullptr));
      assert_false(exists(task_dir(j)));
    }
    assert_false(exists(wrong_dir));
    assert_false(exists(dir + "/tasks/zz"));
    assert_false(exists(dir + "/tasks/" + good.substr(0, 2) + "/stray"));
    assert_int_equal(s->discarded_at_open(), 10);
    assert_disk_matches(s.get());
  }
  rm_rf(dir);
}

void test_open_refuses(void**) {
  std::string dir = make_tmpdir();
  std::string err;
  std::unique_ptr<Store> s;
  // Not a Shoal data dir: never cleaned.
  write_file(dir + "/precious", "x");
  assert_int_equal(Store::open(dir, &s, &err), -ENOTEMPTY);
  assert_non_null(std::strstr(err.c_str(), dir.c_str()));
  assert_true(exists(dir + "/precious"));
  assert_int_equal(::unlink((dir + "/precious").c_str()), 0);
  // Another version.
  {
    auto first = open_store(dir);
    // One Store per data dir.
    assert_int_equal(Store::open(dir, &s, &err), -EBUSY);
    assert_non_null(std::strstr(err.c_str(), dir.c_str()));
  }
  write_file(dir + "/version", "2\n");
  assert_int_equal(Store::open(dir, &s, &err), -ENOTSUP);
  assert_non_null(std::strstr(err.c_str(), "unsupported store version \"2\""));
  // Under a regular file.
  assert_int_equal(Store::open(dir + "/version/sub", &s, &err), -ENOTDIR);
  assert_non_null(std::strstr(err.c_str(), "/version"));
  assert_int_equal(Store::open("", &s, &err), -EINVAL);
  assert_null(s.get());
  rm_rf(dir);
}

void test_gc(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir);
    s->set_clock_for_test(test_clock);
    std::vector<std::string> ids;
    for (uint64_t i = 0; i < 4; ++i) {
      g_now = 100 * static_cast<int64_t>(i + 1);  // a=100 b=200 c=300 d=400
      ids.push_back(id_for(20 + i));
      assert_int_equal(put(s.get(), ids.back(), data_for(20 + i, 1000)), 0);
    }
    const std::string &a = ids[0], &b = ids[1], &c = ids[2], &d = ids[3];
    g_now = 500;
    assert_true(s->touch(a));  // a is now the most recent
    assert_int_equal(s->pin(c), 0);
    assert_int_equal(s->pin(c), 0);
    s->unpin(c);  // still pinned once

    // Expiry: idle >= 250 s at 600 are b (400 s) and c (pinned).
    GcResult r = s->gc(0, 250, 600);
    assert_int_equal(r.ids.size(), 1);
    assert_string_equal(r.ids[0].c_str(), b.c_str());
    assert_int_equal(r.bytes, 1000);
    assert_false(s->lookup(b, nullptr));
    assert_false(exists(dir + "/tasks/" + b.substr(0, 2) + "/" + b));
    // Quota: oldest first (d, then a) until 1500 bytes remain at most.
    r = s->gc(1500, 0, 600);
    assert_int_equal(r.ids.size(), 2);
    assert_string_equal(r.ids[0].c_str(), d.c_str());
    assert_string_equal(r.ids[1].c_str(), a.c_str());
    assert_int_equal(r.bytes, 2000);
    assert_true(s->lookup(c, nullptr));
    assert_int_equal(s->total_bytes(), 1000);
    // Even a zero-ish quota spares a pinned task.
    assert_int_equal(s->gc(1, 1, 1000000).ids.size(), 0);
    s->unpin(c);
    s->unpin(c);  // extra unpin is harmless
    assert_int_equal(s->gc(1500, 0, 600).ids.size(), 0);
    r = s->gc(500, 0, 600);
    assert_int_equal(r.ids.size(), 1);
    assert_int_equal(s->task_count(), 0);
    assert_int_equal(s->total_bytes(), 0);
    assert_disk_matches(s.get());
    // A GC'd id can be downloaded again.
    assert_int_equal(put(s.get(), b, data_for(21, 1000)), 0);
    assert_true(get(s.get(), b) == data_for(21, 1000));
  }
  rm_rf(dir);
}

// Writers, readers and GC on many threads at once. Every read returns the
// exact bytes; the disk matches the index at the end.
void test_concurrency(void**) {
  std::string dir = make_tmpdir();
  {
    auto s = open_store(dir);
    constexpr int kIds = 24;
    std::atomic<bool> stop{false};
    std::atomic<int> bad{0}, committed{0}, reads{0};
    auto data_of = [](int i) {
      return data_for(100 + static_cast<uint64_t>(i), 20000 + 997 * static_cast<size_t>(i));
    };
    std::vector<std::thread> ts;
    for (int t = 0; t < 6; ++t) {
      ts.emplace_back([&, t] {
        for (int round = 0; round < 2; ++round) {
          for (int k = 0; k < kIds; ++k) {
            int i = (k * 7 + t * 5 + round) % kIds;
            int r = put(s.get(), id_for(100 + static_cast<uint64_t>(i)), data_of(i), 4096);
            if (r == 0) {
              ++committed;
            } else if (r != -EEXIST) {
              ++bad;
            }
          }
        }
      });
    }
    for (int t = 0; t < 2; ++t) {
      ts.emplace_back([&] {
        while (!stop) {
          for (int i = 0; i < kIds; ++i) {
            std::string id = id_for(100 + static_cast<uint64_t>(i));
            if (s->pin(id) != 0) continue;  // not complete (yet, or any more)
            // Pinned: GC cannot remove it, so it must open and read back intact.
            int fd = s->open_data(id, nullptr);
            if (fd < 0 || read_fd(fd) != data_of(i)) ++bad;
            if (fd >= 0) ::close(fd);
            ++reads;
            s->touch(id);
            s->unpin(id);
          }
        }
      });
    }
    ts.emplace_back([&] {
      while (!stop) {
        s->gc(200000, 0, 0);
        s->list();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    for (int t = 0; t < 6; ++t) ts[static_cast<size_t>(t)].join();
    stop = true;
    for (size_t t = 6; t < ts.size(); ++t) ts[t].join();
    assert_int_equal(bad.load(), 0);
    assert_true(committed.load() >= kIds);
    for (const TaskMeta& m : s->list()) {
      int i = 0;
      while (id_for(100 + static_cast<uint64_t>(i)) != m.id) ++i;
      assert_true(get(s.get(), m.id) == data_of(i));
    }
    s->gc(200000, 0, 0);  // the GC thread may have stopped before the last commits
    assert_true(s->total_bytes() <= 200000);
    assert_disk_matches(s.get());
  }
  rm_rf(dir);
}

// --- crash tests -----------------------------------------------------------

const char* g_kill_step = nullptr;
void kill_at_step(const char* step) {
  if (g_kill_step != nullptr && std::strcmp(step, g_kill_step) == 0) ::raise(SIGKILL);
}

// In a child: open the store, tell the parent (one byte on ready_fd, if
// given), write data as id in 8 KiB chunks, commit, optionally GC
// everything, exit 0. Allocating after fork() is fine here: the test process
// is single-threaded at this point.
pid_t spawn_writer(const std::string& dir, const std::string& id, const std::string& data,
                   const char* kill_step, bool gc_after, int ready_fd = -1) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid != 0) return pid;
  g_kill_step = kill_step;
  shoal::task::set_crash_hook_for_test(kill_at_step);
  std::unique_ptr<Store> s;
  if (Store::open(dir, &s, nullptr) != 0) _exit(2);
  if (ready_fd >= 0 && ::write(ready_fd, "r", 1) != 1) _exit(4);
  if (!id.empty() && put(s.get(), id, data, 8192) != 0) _exit(3);
  if (gc_after) s->gc(1, 0, 0);
  _exit(0);
}

int wait_status(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// Reopens dir and checks that nothing but complete tasks is on disk, that id
// (when present) has exactly its bytes and piece hashes, and, if all, that
// every task does. Returns whether id is present.
bool check_after_crash(const std::string& dir, const std::map<std::string, std::string>& expected,
                       const std::string& id, bool all = true) {
  auto s = open_store(dir);
  for (const TaskMeta& m : s->list()) {
    auto it = expected.find(m.id);
    assert_true(it != expected.end());
    assert_int_equal(m.length, it->second.size());
    if (!all && m.id != id) continue;
    if (get(s.get(), m.id) != it->second) fail_msg("task %s: wrong bytes after crash", m.id.c_str());
    assert_true(m.pieces == meta_for(m.id, it->second).pieces);
  }
  assert_disk_matches(s.get());
  return s->lookup(id, nullptr);
}

void test_crash_at_each_step(void**) {
  std::string dir = make_tmpdir();
  std::map<std::string, std::string> expected;
  struct Step {
    const char* name;
    bool present;
  };
  const Step steps[] = {{"data-synced", false},
                        {"meta-written", false},
                        {"renamed", false},
                        {"marker-written", true},
                        {"committed", true}};
  uint64_t seed = 300;
  for (const Step& st : steps) {
    std::string id = id_for(seed), data = data_for(seed, 50000);
    ++seed;
    expected[id] = data;
    int status = wait_status(spawn_writer(dir, id, data, st.name, false));
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    bool present = check_after_crash(dir, expected, id);
    if (present != st.present) fail_msg("killed at %s: task %s", st.name, present ? "present" : "absent");
  }
  // Killed in GC right after the first removal: the rest stay complete.
  size_t before;
  {
    auto s = open_store(dir);
    before = s->task_count();
  }
  assert_true(before >= 2);
  int status = wait_status(spawn_writer(dir, "", "", "gc-renamed", true));
  assert_true(WIFSIGNALED(status));
  check_after_crash(dir, expected, "");
  {
    auto s = open_store(dir);
    assert_int_equal(s->task_count(), before - 1);
  }
  rm_rf(dir);
}

// Runs one child writing id and kills it delay_us after it has opened the
// store (delay_us < 0: let it finish). Returns its wait status and, in
// *write_us, how long it ran after opening.
int run_and_kill(const std::string& dir, const std::string& id, const std::string& data, long delay_us,
                 long* write_us) {
  int p[2];
  assert_int_equal(::pipe2(p, O_CLOEXEC), 0);
  pid_t pid = spawn_writer(dir, id, data, nullptr, false, p[1]);
  ::close(p[1]);
  char c;
  ssize_t n = ::read(p[0], &c, 1);
  ::close(p[0]);
  assert_int_equal(n, 1);
  auto t0 = std::chrono::steady_clock::now();
  if (delay_us >= 0) {
    if (delay_us > 0) ::usleep(static_cast<useconds_t>(delay_us));
    ::kill(pid, SIGKILL);
  }
  int status = wait_status(pid);
  *write_us = static_cast<long>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
  return status;
}

void test_crash_random_kill(void**) {
  std::string dir = make_tmpdir();
  std::map<std::string, std::string> expected;
  std::mt19937_64 rng(12345);
  auto t0 = std::chrono::steady_clock::now();
  constexpr size_t kMaxLen = 256 * 1024;
  // Calibrate: how long do begin + writes + commit take for the largest task?
  long full_us = 0;
  for (uint64_t i = 0; i < 3; ++i) {
    std::string id = id_for(500 + i), data = data_for(500 + i, kMaxLen);
    expected[id] = data;
    long us;
    int status = run_and_kill(dir, id, data, -1, &us);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    full_us = std::max(full_us, us);
  }
  int absent = 0, present = 0, finished = 0, in_tmp = 0, unmarked = 0;
  // 200 kills take 3-6 s on this VM's ext4 (fsync latency varies); stop
  // early on a slower disk so the binary stays near 10 s.
  constexpr int kIterations = 200;
  const auto deadline = t0 + std::chrono::seconds(7);
  int done = 0;
  for (int i = 0; i < kIterations && std::chrono::steady_clock::now() < deadline; ++i, ++done) {
    uint64_t seed = 1000 + static_cast<uint64_t>(i);
    // Every 10th child runs to the end at full size, to follow the disk's
    // changing fsync latency.
    bool recalibrate = i % 10 == 9;
    std::string id = id_for(seed), data = data_for(seed, recalibrate ? kMaxLen : 1 + rng() % kMaxLen);
    expected[id] = data;
    // Uniform over the write and commit window of this size, and a little past.
    long window = full_us * static_cast<long>(data.size()) / static_cast<long>(kMaxLen) + full_us / 4;
    long delay = recalibrate ? -1 : static_cast<long>(rng() % static_cast<uint64_t>(window + 1));
    long us;
    int status = run_and_kill(dir, id, data, delay, &us);
    if (recalibrate) full_us = (full_us + us) / 2;
    if (WIFEXITED(status)) {
      assert_int_equal(WEXITSTATUS(status), 0);
      ++finished;
    } else {
      assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    }
    // Where the kill landed, as the disk shows it before open() cleans up.
    std::string td = dir + "/tasks/" + id.substr(0, 2) + "/" + id;
    if (count_entries(dir + "/tmp") > 0) ++in_tmp;
    if (exists(td) && !exists(td + "/verified")) ++unmarked;
    bool here = check_after_crash(dir, expected, id, false);
    if (WIFEXITED(status)) assert_true(here);
    here ? ++present : ++absent;
  }
  check_after_crash(dir, expected, "", true);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  print_message(
      "[          ] %d children (every 10th not killed): %d absent (%d in tmp/, %d renamed but unmarked), %d "
      "complete (%d ran to the "
      "end); write+commit ~%ld us; %lld ms\n",
      done, absent, in_tmp, unmarked, present, finished, full_us, static_cast<long long>(ms));
  assert_true(done >= 50);
  assert_true(absent > 0);
  assert_true(present > 0);
  rm_rf(dir);
}

// --- disk full -------------------------------------------------------------

std::string g_filler;
void fill_disk_at_renamed(const char* step) {
  if (std::strcmp(step, "renamed") != 0 || g_filler.empty()) return;
  int fd = ::open(g_filler.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  char buf[4096] = {};
  while (::write(fd, buf, sizeof buf) > 0) {
  }
  ::close(fd);
}

void fill(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  assert_true(fd >= 0);
  char buf[4096] = {};
  while (::write(fd, buf, sizeof buf) > 0) {
  }
  assert_int_equal(errno, ENOSPC);
  ::close(fd);
}

void test_disk_full(void**) {
  std::string mnt = make_tmpdir();
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    int e = errno;
    ::rmdir(mnt.c_str());
    print_message("[  SKIPPED ] disk-full test: mount -t tmpfs -o size=1m failed (%s); needs root\n",
                  std::strerror(e));
    skip();
  }
  std::string dir = mnt + "/data", err;
  {
    auto s = open_store(dir);
    // 1. Data does not fit.
    std::string id = id_for(700), chunk = data_for(700, 65536);
    std::unique_ptr<Writer> w;
    assert_int_equal(s->begin(id, &w, &err), 0);
    int r = 0;
    uint64_t off = 0;
    for (; off < (4u << 20) && r == 0; off += chunk.size())
      r = w->write(chunk.data(), chunk.size(), off, &err);
    assert_int_equal(r, -ENOSPC);
    assert_non_null(std::strstr(err.c_str(), (dir + "/tmp/" + id).c_str()));
    assert_non_null(std::strstr(err.c_str(), "No space left on device"));
    assert_int_equal(w->write("x", 1, 0, &err), -ENOSPC);  // unusable from now on
    assert_int_equal(w->commit(meta_for(id, ""), &err), -ENOSPC);
    w->abort();
    assert_int_equal(count_entries(dir + "/tmp"), 0);
    assert_false(s->lookup(id, nullptr));

    // 2. Data fits, meta.json does not.
    std::string small = data_for(701, 4096);
    assert_int_equal(s->begin(id, &w, &err), 0);
    assert_int_equal(w->write(small.data(), small.size(), 0, &err), 0);
    fill(mnt + "/filler");
    r = w->commit(meta_for(id, small), &err);
    assert_int_equal(r, -ENOSPC);
    assert_non_null(std::strstr(err.c_str(), "meta.json"));
    w->abort();
    assert_int_equal(::unlink((mnt + "/filler").c_str()), 0);
    assert_int_equal(count_entries(dir + "/tmp"), 0);
    assert_false(s->lookup(id, nullptr));
    assert_disk_matches(s.get());

    // 3. Disk fills after the rename, before the marker: the renamed
    // directory is taken back out of tasks/.
    assert_int_equal(s->begin(id, &w, &err), 0);
    assert_int_equal(w->write(small.data(), small.size(), 0, &err), 0);
    g_filler = mnt + "/filler";
    shoal::task::set_crash_hook_for_test(fill_disk_at_renamed);
    r = w->commit(meta_for(id, small), &err);
    shoal::task::set_crash_hook_for_test(nullptr);
    g_filler.clear();
    assert_int_equal(r, -ENOSPC);
    assert_non_null(std::strstr(err.c_str(), "verified"));
    w->abort();
    assert_int_equal(::unlink((mnt + "/filler").c_str()), 0);
    assert_false(s->lookup(id, nullptr));
    assert_false(exists(dir + "/tasks/" + id.substr(0, 2) + "/" + id));
    assert_disk_matches(s.get());

    // With space again the store works.
    assert_int_equal(put(s.get(), id, small), 0);
  }
  {
    auto s = open_store(dir);
    assert_int_equal(s->task_count(), 1);
    assert_true(get(s.get(), id_for(700)) == data_for(701, 4096));
  }
  ::umount2(mnt.c_str(), MNT_DETACH);
  ::rmdir(mnt.c_str());
}

}  // namespace

int run_task_id_tests();       // test_task_id.cpp
int run_piece_hasher_tests();  // test_piece_hasher.cpp

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_piece_helpers),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_direct_writes),
      cmocka_unit_test(test_abort_leaves_nothing),
      cmocka_unit_test(test_reopen_finds_task_and_access_time),
      cmocka_unit_test(test_duplicate_commit),
      cmocka_unit_test(test_invalid_ids),
      cmocka_unit_test(test_commit_validates_meta),
      cmocka_unit_test(test_open_cleans_debris),
      cmocka_unit_test(test_open_refuses),
      cmocka_unit_test(test_gc),
      cmocka_unit_test(test_concurrency),
      cmocka_unit_test(test_crash_at_each_step),
      cmocka_unit_test(test_crash_random_kill),
      cmocka_unit_test(test_disk_full),
  };
  int failed = cmocka_run_group_tests_name("task store", tests, nullptr, nullptr);
  return failed + run_task_id_tests() + run_piece_hasher_tests();
}
