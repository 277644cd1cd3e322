// An SSE stream's start and replay: the retained messages after the client's cursor are
// read a page at a time (at most kPageMessages messages or kPageBytes bytes under the zone
// lock, whatever the history) while the client takes them — after each write that emptied
// the output, the next page comes on the next event-loop turn, so a replay finishes at the
// client's speed with or without write events or pings (README "What one client can cost"). Live messages wait in the
// store meanwhile and come in the pages, in id order, deletion markers included.

#include <algorithm>

#include "ngx_http_channels_fault.h"
#include "ngx_http_channels_sse_events.h"
#include "ngx_http_channels_sse_stream.h"

namespace channels {
namespace {

constexpr int kPagesPerTurn = 8;   // read ahead while the output stays under a page

}  // namespace

ngx_int_t SseStream::start(ngx_http_cleanup_t *cln, const Batch &first_page, bool more) noexcept {
    LocConf *lcf = loc_conf(request);
    cleanup_ = cln;
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(ngx_http_get_module_loc_conf(request, ngx_http_core_module));
    ping_interval_ = uint32_t(std::min<ngx_msec_t>(lcf->sse_ping, UINT32_MAX));
    send_timeout_ = uint32_t(std::min<ngx_msec_t>(clcf->send_timeout, UINT32_MAX));
    timer_ = static_cast<ngx_event_t *>(ngx_pcalloc(request->pool, sizeof(ngx_event_t)));
    if (timer_ == nullptr) return NGX_ERROR;
    timer_->data = this;
    timer_->log = conn_->log;
    catching_up_ = more;
    if (!queue_page(first_page, true) || write_output() != NGX_OK) return NGX_ERROR;
    if (catching_up_) schedule_refill();
    if (may_detach()) {
        timer_->handler = detach_handler;   // once the handler has returned
        ngx_post_event(timer_, &ngx_posted_events);
    } else {
        start_pings();
    }
    return NGX_OK;
}

// One page as one frame: gap notices, then the messages and deletion markers in id order
// (the stream's first page also carries retry:, and a comment when it holds nothing else,
// to flush the header).
bool SseStream::queue_page(const Batch &page, bool first) noexcept {
    ngx_msec_t retry_ms = first ? loc_conf(request)->sse_retry : 0;   // the request is there at first
    bool retry = retry_ms > 0;
    bool filler = first && !retry && page.gaps.empty() && page.items.empty();
    if (retry || filler || !page.gaps.empty() || !page.items.empty()) {
        MessageId from = cursor;
        IdFormatter ids;
        Frame *f = frame_build_guessed(detached_, [&](auto &sink) {
            if (retry) put_retry(sink, retry_ms);
            if (filler) sink.put(std::string_view(":\n\n"));
            for (const GapInfo &gap : page.gaps) put_gap_event(sink, gap.channel_id, from, gap.oldest);
            for (const MessageCopy &m : page.items) {
                if (m.kind == EntryKind::deleted) {
                    put_deleted_event(sink, m.id, m.channel_id);
                } else {
                    put_message_event(sink, m, multi, ids);
                }
            }
        });
        bool queued = f != nullptr && queue(f);
        frame_unref(f);
        if (!queued) return false;
    }
    for (const MessageCopy &m : page.items) {
        cursor = std::max(cursor, m.id);
        if (m.kind == EntryKind::deleted) leaving_ = true;   // the store ended its position
    }
    if (!page.more) {
        catching_up_ = false;
        cursor = std::max(cursor, page.position);   // later ids come live
        for (size_t i = 0; i < nlinks; i++) links[i].seen = PackedId::of(cursor);
    }
    if (leaving_) leave_deleted_channels();
    return true;
}

// Queues replay pages while the output is short of one; false when memory is short.
bool SseStream::refill() noexcept {
    for (int pages = 0; catching_up_ && held() < kPageBytes && pages < kPagesPerTurn; pages++) {
        if (fault::hit(fault::Site::replay_read)) return false;
        Batch *b = batch_take(wz, kPageBytes);
        if (b == nullptr) return false;
        wz->store->read_page(wz->session, positions, nlinks, cursor, news_after, kPageMessages, kPageBytes, *b);
        if (b->need_bytes > 0) {   // one message larger than a page
            if (!batch_grow(b)) {
                batch_give(wz, b);
                return false;
            }
            b->clear();
            wz->store->read_page(wz->session, positions, nlinks, cursor, news_after, kPageMessages, kPageBytes, *b);
        }
        bool queued = queue_page(*b, false);
        batch_give(wz, b);
        if (!queued) return false;
    }
    return true;
}

void SseStream::schedule_refill() noexcept {
    if (!conn_->write->posted) {
        ngx_post_event(conn_->write, &ngx_posted_next_events);
    }
}

}  // namespace channels
