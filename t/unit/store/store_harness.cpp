// The store test harness (see store_harness.h).
#include "store_harness.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <set>

extern "C" {
extern ngx_module_t ngx_http_channels_module;
}

void channels::PrintTo(const MessageId &id, std::ostream *os)
{
    *os << storetest::text(id);
}

void channels::PrintTo(const SubscribeStatus &status, std::ostream *os)
{
    static const char *const names[] = {"ok", "not_found", "over_cap", "no_memory"};
    *os << names[size_t(status)];
}

void channels::PrintTo(const PublishCall::Status &status, std::ostream *os)
{
    static const char *const names[] = {"ok", "not_found", "too_large", "unavailable", "failed"};
    *os << names[size_t(status)];
}

namespace storetest {

using namespace channels;
using namespace channels::shm;

std::string text(MessageId id)
{
    char buf[kMaxIdText];
    return std::string(buf, format_id(id, buf));
}

MessageId id_of(const std::string &s)
{
    std::optional<MessageId> id = parse_id(s);
    if (!id) ADD_FAILURE() << "not an id: " << s;
    return id.value_or(MessageId{});
}

std::string join(const std::vector<std::string> &lines)
{
    std::string out;
    for (const std::string &l : lines) out += l + "\n";
    return out;
}

// ---- LiveProcess ----

LiveProcess::LiveProcess()
{
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    pid_ = fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {                         // waits for its pipe to close: the test ended or died
        for (int fd = 3; fd < 1024; fd++) {  // holds no other helper's pipe open
            if (fd != fds[0]) close(fd);
        }
        char c;
        while (read(fds[0], &c, 1) < 0 && errno == EINTR) {
        }
        _exit(0);
    }
    close(fds[0]);
    fd_ = fds[1];
}

LiveProcess::~LiveProcess()
{
    if (fd_ >= 0) close(fd_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
}

void LiveProcess::kill_now()
{
    if (pid_ <= 0 || fd_ < 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    close(fd_);
    fd_ = -1;
}

// ---- pages ----

std::vector<std::string> Page::data() const
{
    std::vector<std::string> out;
    for (const Msg &m : items)
        out.push_back(m.kind == EntryKind::deleted ? "<deleted " + m.channel + ">" : m.data);
    return out;
}

std::vector<MessageId> Page::ids() const
{
    std::vector<MessageId> out;
    for (const Msg &m : items) out.push_back(m.id);
    return out;
}

bool Page::has_gap(const std::string &channel) const
{
    for (const Gap &g : gaps) {
        if (g.channel == channel) return true;
    }
    return false;
}

Page copy_of(const Batch &b)
{
    Page p;
    for (const MessageCopy &m : b.items) {
        p.items.push_back({m.id, m.kind, m.channel_index, std::string(m.channel_id),
                           std::string(m.event), std::string(m.content_type), std::string(m.data)});
    }
    for (const GapInfo &g : b.gaps)
        p.gaps.push_back({g.channel_index, std::string(g.channel_id), g.oldest, g.upto});
    p.position = b.position;
    p.all_lost = b.all_lost;
    p.more = b.more;
    p.need_bytes = b.need_bytes;
    return p;
}

Batch make_batch(size_t bytes)
{
    Batch b;
    if (!b.reserve(kLogPageEntries, bytes + kMaxChannels * 256)) std::abort();
    return b;
}

// ---- Sub ----

Sub::Sub(Worker &worker, std::vector<std::string> channel_ids)
    : w(worker), ids(std::move(channel_ids))
{
    for (const std::string &id : ids) {
        if (list.append_one(id) != ListError::none) ADD_FAILURE() << "bad channel id " << id;
    }
}

Sub::~Sub()
{
    close();
}

Page Sub::next_page(size_t limit, size_t byte_limit, size_t byte_room)
{
    As as(w);
    Batch b = make_batch(byte_room);
    w.store.read_page(w.session, pos, list.count, cursor, attached_at, limit, byte_limit, b);
    Page p = copy_of(b);
    for (const Msg &m : p.items) cursor = std::max(cursor, m.id);
    if (!p.more) cursor = std::max(cursor, p.position);
    return p;
}

std::vector<Msg> Sub::replay_all(std::vector<Gap> *gaps)
{
    std::vector<Msg> out;
    for (int n = 0; n < 100000; n++) {
        Page p = next_page();
        if (p.need_bytes > 0) p = next_page(kPageMessages, kPageBytes, p.need_bytes);
        out.insert(out.end(), p.items.begin(), p.items.end());
        if (gaps != nullptr) gaps->insert(gaps->end(), p.gaps.begin(), p.gaps.end());
        if (!p.more) return out;
    }
    ADD_FAILURE() << "a replay that does not end";
    return out;
}

void Sub::leave(size_t i)
{
    LocalChannel *lc = pos[i].channel;
    if (closed || lc == nullptr || !w.started) return;
    As as(w);
    pos[i].channel = nullptr;
    pos[i].active = false;
    w.store.unsubscribe(w.session, &lc, 1, false);
    if (lc->count == 0) w.session.forget(lc);
}

void Sub::close()
{
    if (closed) return;
    closed = true;
    if (!attached || !w.started) return;  // a worker that exited or died took it along
    As as(w);
    LocalChannel *lcs[kMaxChannels];
    size_t n = 0;
    for (size_t i = 0; i < list.count; i++) {
        if (pos[i].channel != nullptr) lcs[n++] = pos[i].channel;
        pos[i].channel = nullptr;
    }
    w.store.unsubscribe(w.session, lcs, n, true);
    for (size_t i = 0; i < n; i++) {
        if (lcs[i]->count == 0) w.session.forget(lcs[i]);
    }
}

// ---- Worker ----

// A worker's store is the master's, copied by fork() (with its id file descriptor).
Worker::Worker(TestZone &z, size_t i) : zone(z), index(i), store(z.master)
{
    As as(*this);
    if (store.start_worker(ngxstub::cycle(), &session, &listener) != NGX_OK)
        ADD_FAILURE() << "start_worker";
    started = true;
}

Worker::~Worker()
{
    stop();
}

WorkerRecord *Worker::record() const
{
    return static_cast<WorkerRecord *>(session.record);
}

Published Worker::publish(std::string_view channel, std::string_view data, std::string_view event,
                          std::string_view content_type)
{
    As as(*this);
    PublishCall call;
    call.in = {channel, data, event, content_type};
    call.done = [](PublishCall *) {};
    if (store.start(&call) != NGX_OK) ADD_FAILURE() << "a publish did not complete at once";
    return {call.status, call.id, call.subscribers, call.messages, call.info};
}

Published Worker::remove(std::string_view channel)
{
    As as(*this);
    PublishCall call;
    call.in = {channel, {}, {}, {}};
    call.remove = true;
    call.done = [](PublishCall *) {};
    if (store.start(&call) != NGX_OK) ADD_FAILURE() << "a delete did not complete at once";
    return {call.status, call.id, call.subscribers, call.messages, call.info};
}

ChannelInfo Worker::info(std::string_view channel)
{
    As as(*this);
    return store.info(channel);
}

std::unique_ptr<Sub> Worker::subscribe(std::vector<std::string> ids, SubOptions o)
{
    As as(*this);
    auto sub = std::make_unique<Sub>(*this, std::move(ids));
    size_t n = sub->list.count;
    for (size_t i = 0; i < n; i++) {
        sub->locals[i] = session.prepare(sub->list.ids[i]);
        if (sub->locals[i] == nullptr) std::abort();
    }
    SubscribeQuery q;
    q.list = &sub->list;
    q.locals = sub->locals;
    q.has_cursor = o.cursor.has_value();
    q.cursor = o.cursor.value_or(MessageId{});
    q.first = o.first;
    q.existing_only = o.existing_only;
    q.attach = o.attach;
    q.attach_only_if_empty = o.only_if_empty;
    q.limit = o.limit;
    q.byte_limit = o.byte_limit;
    Batch page = make_batch(kPageBytes);
    SubscribeResult res = store.subscribe(session, q, sub->pos, page);
    sub->status = res.status;
    sub->failed_index = res.failed_index;
    sub->attached = res.attached;
    sub->attached_at = res.attached_at;
    sub->first = copy_of(page);
    sub->cursor = q.cursor;
    for (const Msg &m : sub->first.items) sub->cursor = std::max(sub->cursor, m.id);
    if (!sub->first.more) sub->cursor = std::max(sub->cursor, sub->first.position);
    if (res.status != SubscribeStatus::ok || !res.attached) {
        for (size_t i = 0; i < n; i++) {
            if (!sub->locals[i]->registered && sub->locals[i]->count == 0)
                session.discard(sub->locals[i]);
            sub->pos[i].channel = nullptr;
        }
        return sub;
    }
    for (size_t i = 0; i < n; i++) {
        session.commit(sub->locals[i]);
        sub->pos[i].channel = sub->locals[i];
    }
    return sub;
}

Page Worker::read_log(bool woken, size_t byte_room)
{
    As as(*this);
    Batch b = make_batch(byte_room);
    store.read_log(session, b, woken);
    return copy_of(b);
}

std::vector<Page> Worker::drain_log()
{
    std::vector<Page> pages;
    for (int n = 0; n < 100000; n++) {
        Page p = read_log();
        if (p.need_bytes > 0) {
            pages.push_back(p);  // its loss notices were taken with it
            p = read_log(false, p.need_bytes);
        }
        pages.push_back(p);
        if (!p.more) return pages;
    }
    ADD_FAILURE() << "a log that does not end";
    return pages;
}

uint64_t Worker::ingest(EntryKind kind, MessageId id, std::string_view channel,
                        std::string_view data)
{
    As as(*this);
    return store.ingest(kind, id, {channel, data, {}, {}});
}

// A housekeeping tick and the sweep rounds the worker then runs between its other events.
void Worker::collect()
{
    As as(*this);
    if (store.collect(&session)) {
        while (store.sweep()) {
        }
    }
}

void Worker::stop()
{
    if (!started) return;
    As as(*this);
    started = false;
    store.stop_worker(&session);
}

void Worker::die()
{
    started = false;  // no stop_worker: the record stays behind
    proc.kill_now();
}

void Worker::abandon()
{
    started = false;
}

size_t Worker::wake_targets(uint64_t bits, std::vector<ngx_pid_t> *pids)
{
    As as(*this);
    std::vector<channels::WakeTarget> targets(128);
    size_t n = store.wake_targets(bits, targets.data(), targets.size());
    pids->clear();
    for (size_t i = 0; i < n; i++) pids->push_back(targets[i].pid);
    return n;
}

// ---- TestZone ----

TestZone::TestZone(Options o)
    : opts(o),
      pool(ngxstub::pool_create(o.bytes)),
      name(o.name),
      master(&shm_zone, ngx_str_t{name.size(), reinterpret_cast<u_char *>(name.data())}, o.history,
             o.ttl_ms)
{
    shm_zone.shm.addr = reinterpret_cast<u_char *>(pool);
    shm_zone.shm.size = o.bytes;
    shm_zone.shm.name = ngx_str_t{name.size(), reinterpret_cast<u_char *>(name.data())};
    shm_zone.tag = &ngx_http_channels_module;
    master.redis_ids = o.redis_ids;
    ngxstub::allow_unlocked(pool, true);  // configuration time: one process
    if (master.init(false) != NGX_OK) ADD_FAILURE() << "init of a new zone failed";
    ngxstub::allow_unlocked(pool, false);
    if (o.open_id_file && master.open_id_file(ngxstub::cycle()) != NGX_OK)
        ADD_FAILURE() << "open_id_file";
}

TestZone::~TestZone()
{
    workers_.clear();
    ngxstub::pool_destroy(pool);
}

Channel *TestZone::channel(std::string_view id) const
{
    Shared *s = sh();
    if (s->tree.root == s->tree.sentinel) return nullptr;
    for (ngx_rbtree_node_t *n = ngx_rbtree_min(s->tree.root, s->tree.sentinel); n != nullptr;
         n = ngx_rbtree_next(&s->tree, n)) {
        if (reinterpret_cast<Channel *>(n)->name() == id) return reinterpret_cast<Channel *>(n);
    }
    return nullptr;
}

Worker &TestZone::add_worker()
{
    workers_.push_back(std::make_unique<Worker>(*this, workers_.size()));
    return *workers_.back();
}

namespace {

struct DeepCheck {
    TestZone &z;
    Shared *sh;
    std::vector<std::string> out;
    std::set<const Channel *> channels;
    std::set<const Entry *> in_log;
    std::map<const Channel *, uint32_t> trimmed_of;
    uint64_t message_bytes = 0, idle_bytes = 0;

    void problem(const std::string &what) { out.push_back(what); }

    void tree()
    {
        ngx_rbtree_node_t *sentinel = sh->tree.sentinel;
        if (sh->tree.root == sentinel) return;
        const Channel *prev = nullptr;
        for (ngx_rbtree_node_t *n = ngx_rbtree_min(sh->tree.root, sentinel); n != nullptr;
             n = ngx_rbtree_next(&sh->tree, n)) {
            auto *ch = reinterpret_cast<const Channel *>(n);
            std::string name(ch->name());
            if (!ngxstub::is_live(z.pool, ch)) problem("tree node not a live block: " + name);
            if (n->key != id_key(ch->name())) problem("tree key wrong: " + name);
            if (prev != nullptr && compare_ids(prev->name(), ch->name()) >= 0) {
                problem("tree not in id order at " + name);
            }
            if (n->left != sentinel && n->left->parent != n) problem("tree link wrong at " + name);
            if (n->right != sentinel && n->right->parent != n)
                problem("tree link wrong at " + name);
            if (channels.size() > 1000000) break;
            channels.insert(ch);
            prev = ch;
        }
    }

    void log()
    {
        for (ngx_queue_t *q = ngx_queue_head(&sh->log); q != ngx_queue_sentinel(&sh->log);
             q = ngx_queue_next(q)) {
            const Entry *e = ngx_queue_data(q, Entry, in_log);
            in_log.insert(e);
            if (!ngxstub::is_live(z.pool, e)) problem("log entry not a live block");
            message_bytes += ngxstub::slab_bytes(offsetof(Entry, bytes) + e->text_size());
            Channel *ch = e->channel;
            if (channels.count(ch) == 0) {
                problem("log entry of a freed channel");
                continue;
            }
            if (e->state == EntryState::retained) {
                if (!(!seq_before(e->seq, ch->head_seq) && seq_before(e->seq, ch->next_seq)) ||
                    ch->slot(e->seq) != e) {
                    problem("retained entry not in its ring: " + std::string(ch->name()));
                }
            } else {
                trimmed_of[ch]++;
            }
            uint32_t marks = 0;
            for (ngx_queue_t *r = ngx_queue_head(&sh->records);
                 r != ngx_queue_sentinel(&sh->records); r = ngx_queue_next(r)) {
                if ((ngx_queue_data(r, WorkerRecord, in_zone))->bookmark == e) marks++;
            }
            if (marks != e->bookmarks) problem("entry bookmark count wrong");
        }
        size_t ntrimmed = 0;
        for (ngx_queue_t *q = ngx_queue_head(&sh->trimmed); q != ngx_queue_sentinel(&sh->trimmed);
             q = ngx_queue_next(q)) {
            const Entry *e = ngx_queue_data(q, Entry, in_trimmed);
            if (in_log.count(e) == 0) {
                problem("trimmed list holds an entry not in the log");
                break;
            }
            ntrimmed++;
        }
        size_t expected = 0;
        for (auto &[ch, n] : trimmed_of) expected += n;
        if (ntrimmed != expected) problem("trimmed list and trimmed log entries differ");
    }

    void channel(Channel *ch)
    {
        std::string name(ch->name());
        size_t own = ngxstub::slab_bytes(offsetof(Channel, id) + ch->name().size());
        (ch->has(kIdle) ? idle_bytes : message_bytes) += own;
        if (ch->ring != nullptr) {
            message_bytes += ngxstub::slab_bytes(ch->capacity() * sizeof(Entry *));
            if (!ngxstub::is_live(z.pool, ch->ring)) problem("ring not a live block: " + name);
            if (ch->ring_len() > ch->capacity()) problem("ring overfull: " + name);
        }
        for (uint32_t seq = ch->head_seq; seq != ch->next_seq && ch->ring != nullptr; seq++) {
            if (in_log.count(ch->slot(seq)) == 0) problem("ring entry not in the log: " + name);
        }
        if (ch->log_refs != trimmed_of[ch]) {
            problem("log_refs " + std::to_string(ch->log_refs) + " but " +
                    std::to_string(trimmed_of[ch]) + " trimmed entries: " + name);
        }
        if (ch->has(kPinned)) problem("channel left pinned: " + name);
        if (ch->nmessages > sh->history) problem("channel holds more than history: " + name);
        // A ring that holds only a deletion marker keeps its channel (a client resuming from
        // before the deletion is told); wake bits keep it while counts are being re-added.
        bool held = ch->ring_len() > 0 || ch->subscribers > 0 || ch->wake_bits != 0 || ch->log_refs > 0;
        if (!held) problem("channel nothing holds was kept: " + name);
        if (ch->nmessages == 0 && ch->ring_len() > 0 && !ch->has(kDeleted))
            problem("a ring of markers only, in a channel not deleted: " + name);
    }

    void records()
    {
        size_t n = 0;
        uint64_t bits = 0;
        bool distinct = true;
        uint64_t connections = 0;
        for (ngx_queue_t *q = ngx_queue_head(&sh->records); q != ngx_queue_sentinel(&sh->records);
             q = ngx_queue_next(q)) {
            const WorkerRecord *r = ngx_queue_data(q, WorkerRecord, in_zone);
            n++;
            if (!ngxstub::is_live(z.pool, r)) problem("record not a live block");
            if (r->bit >= 64) problem("record bit out of range");
            if (bits >> r->bit & 1) distinct = false;
            bits |= uint64_t(1) << r->bit;
            if (r->bookmark != nullptr && in_log.count(r->bookmark) == 0)
                problem("record bookmark not in the log");
            if (r->nlosses > kLossNotices) problem("record loss notices overflow");
            for (uint32_t i = 0; i < r->nlosses && i < kLossNotices; i++) {
                if (channels.count(r->losses[i].channel) == 0)
                    problem("loss notice of a freed channel");
            }
            connections += r->connections;
        }
        if (n <= 64 && !distinct) problem("records share a bit with 64 or fewer records");
        if (connections != sh->connections)
            problem("zone connections differ from the records' sum");
        size_t expected = message_bytes + idle_bytes + ngxstub::slab_bytes(sizeof(Shared)) +
                          ngxstub::slab_bytes(sizeof(" in channel_zone \"\"") + z.name.size()) +
                          n * ngxstub::slab_bytes(sizeof(WorkerRecord));
        if (ngxstub::live_bytes(z.pool) != expected) {
            problem("pool holds " + std::to_string(ngxstub::live_bytes(z.pool)) +
                    " bytes, the zone accounts for " + std::to_string(expected) +
                    " (a leak, or a double count)");
        }
    }

    // Worker records count with the messages (they may evict some), not against the idle cap.
    void bytes()
    {
        size_t records = 0;
        for (ngx_queue_t *q = ngx_queue_head(&sh->records); q != ngx_queue_sentinel(&sh->records);
             q = ngx_queue_next(q))
            records++;
        size_t expected = message_bytes + records * ngxstub::slab_bytes(sizeof(WorkerRecord));
        if (sh->message_bytes != expected) {
            problem("message_bytes " + std::to_string(sh->message_bytes) +
                    ", entries/rings/channels/records take " + std::to_string(expected));
        }
        if (sh->idle_bytes != idle_bytes) {
            problem("idle_bytes " + std::to_string(sh->idle_bytes) + ", idle channels take " +
                    std::to_string(idle_bytes));
        }
    }

    // The zone's counts against the registries of the workers (all in step with the zone).
    void counts()
    {
        std::map<const Channel *, uint32_t> subs;
        std::map<const Channel *, uint64_t> bits;
        size_t records = 0;
        for (ngx_queue_t *q = ngx_queue_head(&sh->records); q != ngx_queue_sentinel(&sh->records);
             q = ngx_queue_next(q)) {
            records++;
        }
        for (size_t i = 0; i < z.nworkers(); i++) {
            Worker &w = z.w(i);
            if (!w.started) continue;
            const ZoneSession &s = w.session;
            if (s.record == nullptr || s.generation != sh->generation ||
                s.counted_epoch != sh->count_epoch)
                return;
            uint32_t held = 0;
            s.for_each([&](LocalChannel *lc) {
                if (lc->count == 0 || lc->key == 0) return;
                held++;
                auto *ch = reinterpret_cast<const Channel *>(lc->key);
                if (channels.count(ch) == 0) {
                    problem("registry holds a freed channel: " + std::string(lc->name()));
                    return;
                }
                subs[ch] += lc->count;
                bits[ch] |= uint64_t(1) << s.bit;
            });
            if (held != s.held) problem("session held count wrong, worker " + std::to_string(i));
            if (w.record()->active != (s.held > 0))
                problem("record active flag wrong, worker " + std::to_string(i));
            if (w.record()->connections != s.connections)
                problem("record connections wrong, worker " + std::to_string(i));
        }
        for (const Channel *ch : channels) {
            if (ch->subscribers != subs[ch]) {
                problem("channel " + std::string(ch->name()) + " counts " +
                        std::to_string(ch->subscribers) + " subscribers, registries hold " +
                        std::to_string(subs[ch]));
            }
            if (records <= 64 && ch->wake_bits != bits[ch])
                problem("wake bits wrong: " + std::string(ch->name()));
        }
    }
};

}  // namespace

std::vector<std::string> TestZone::problems(bool with_counts)
{
    std::vector<std::string> out;
    if (ngxstub::locked(pool)) out.push_back("zone mutex left held");
    ZoneCheck c = master.check();  // also rebuilds a torn zone first, as any lock would
    out.insert(out.end(), c.problems.begin(), c.problems.end());
    Shared *s = sh();
    if (s->updating) out.push_back("zone left marked as being updated");
    DeepCheck d{*this, s, {}, {}, {}, {}};
    d.tree();
    d.log();
    for (const Channel *ch : d.channels) d.channel(const_cast<Channel *>(ch));
    d.records();
    d.bytes();
    if (with_counts) d.counts();
    out.insert(out.end(), d.out.begin(), d.out.end());
    return out;
}

// ---- fixture ----

void StoreTest::SetUp()
{
    ngxstub::clear_log();
    ngxstub::set_time_ms(1700000000000);
    ngx_pid = getpid();
}

void StoreTest::TearDown()
{
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_CRIT), 0u) << "[alert]/[crit]/[emerg] in the log:\n"
                                                    << ngxstub::dump_log();
    if (HasFailure())
        std::fprintf(stderr, "---- the test's log ----\n%s", ngxstub::dump_log().c_str());
    ngxstub::run_cleanups();
}

}  // namespace storetest
