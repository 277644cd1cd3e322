// The events an SSE stream sends (README "SSE"), written into a Sink (channels/json_writer.h):
// messages, channel-deleted, channel-gap, retry. Frames are built from them with
// frame_build(), sized first, so each is one exact allocation and nothing throws.
#pragma once

#include "channels/json_writer.h"
#include "channels/sse_format.h"
#include "ngx_http_channels_store.h"

namespace channels {

// A message; in a multi-channel stream (named) an untyped message carries its channel id
// as its event type, so the page can tell channels apart.
template <typename Sink>
void put_message_event(Sink &sink, const MessageCopy &m, bool named) {
    char id[kMaxIdText];
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    put_sse_event(sink, {id, format_id(m.id, id)}, event, m.data);
}

// Counting needs the id's length only.
inline void put_message_event(SizeSink &sink, const MessageCopy &m, bool named) {
    char placeholder[kMaxIdText] = {};
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    put_sse_event(sink, {placeholder, id_text_size(m.id)}, event, m.data);
}

// The same for the messages of a replay page, their ids formatted in a row.
template <typename Sink>
void put_message_event(Sink &sink, const MessageCopy &m, bool named, IdFormatter &ids) {
    char id[kMaxIdText];
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    put_sse_event(sink, {id, ids.format(m.id, id)}, event, m.data);
}

inline void put_message_event(SizeSink &sink, const MessageCopy &m, bool named, IdFormatter &ids) {
    char placeholder[kMaxIdText] = {};
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    put_sse_event(sink, {placeholder, ids.size(m.id)}, event, m.data);
}

// Guessed as if the data held no line break (frame_build_guessed() checks the guess).
inline void put_message_event(GuessSink &sink, const MessageCopy &m, bool named, IdFormatter &ids) {
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    sink.add(sse_event_size_unbroken(ids.size(m.id), event, m.data.size()));
}

namespace sse_events_detail {

// Small JSON data (a channel id and two ids) in a stack buffer.
inline constexpr size_t kSmallJson = 512;

template <typename Fn>
std::string_view small_json(char *buf, Fn &&fill) {
    BufferSink out(buf);
    JsonWriter<BufferSink> w(out);
    fill(w);
    return {buf, size_t(out.end() - buf)};
}

}  // namespace sse_events_detail

template <typename Sink>
void put_deleted_event(Sink &sink, MessageId id, std::string_view channel) {
    char buf[sse_events_detail::kSmallJson], text[kMaxIdText];
    std::string_view json = sse_events_detail::small_json(buf, [&](JsonWriter<BufferSink> &w) {
        w.open_object().key("channel").string(channel).close_object();
    });
    put_sse_event(sink, {text, format_id(id, text)}, "channel-deleted", json);
}

// No id line: a gap notice must not move the client's Last-Event-ID.
template <typename Sink>
void put_gap_event(Sink &sink, std::string_view channel, MessageId cursor, MessageId oldest) {
    char buf[sse_events_detail::kSmallJson];
    std::string_view json = sse_events_detail::small_json(buf, [&](JsonWriter<BufferSink> &w) {
        w.open_object().key("channel").string(channel).key("last_event_id").id(cursor);
        w.key("oldest_event_id").id(oldest).close_object();
    });
    put_sse_event(sink, {}, "channel-gap", json);
}

template <typename Sink>
void put_retry(Sink &sink, uint64_t ms) {
    sink.put(std::string_view("retry: "));
    put_uint(sink, ms);
    sink.put(std::string_view("\n\n"));
}

}  // namespace channels
