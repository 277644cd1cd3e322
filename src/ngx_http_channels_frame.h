// Frames: formatted SSE events in worker memory, reference-counted and shared by every
// local subscriber that writes them (HTTP/1.x buffers point into them: no per-subscriber
// copy). A message is formatted at most once per variant and delivery pass.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <string_view>

#include "channels/json_writer.h"

namespace channels {

struct Frame {
    uint32_t refs;
    uint32_t len;
    u_char   data[1];
};

// A frame with room for body_len bytes at *body, as is or wrapped as one HTTP/1.1 chunk
// (head and trailer written); nullptr when memory is short.
Frame *frame_alloc(size_t body_len, bool chunked, u_char **body) noexcept;
// A frame holding bytes.
Frame *frame_new(std::string_view bytes, bool chunked) noexcept;
inline void frame_ref(Frame *f) { f->refs++; }
void frame_unref(Frame *f) noexcept;
// A frame of what write(sink) writes: sized with a SizeSink, then written in place.
template <typename WriteFn>
Frame *frame_build(bool chunked, WriteFn &&write) noexcept {
    SizeSink size;
    write(size);
    u_char *body;
    Frame *f = frame_alloc(size.size(), chunked, &body);
    if (f == nullptr) return nullptr;
    BufferSink out(reinterpret_cast<char *>(body));
    write(out);
    return f;
}
// As frame_build(), in one pass when write(GuessSink) sized the frame exactly (a replay page
// whose data holds no line breaks: no scan for them before writing), else in two.
template <typename WriteFn>
Frame *frame_build_guessed(bool chunked, WriteFn &&write) noexcept {
    GuessSink guess;
    write(guess);
    u_char *body;
    Frame *f = frame_alloc(guess.size(), chunked, &body);
    if (f == nullptr) return nullptr;
    BoundedSink out(reinterpret_cast<char *>(body), guess.size());
    write(out);
    if (out.filled()) return f;
    frame_unref(f);
    return frame_build(chunked, write);
}

// Worker-wide frames that never change: the keep-alive comment and the end of a chunked body.
Frame *ping_frame(bool chunked) noexcept;
Frame *end_frame() noexcept;

// The frames of one message in one pass, made on first use: for single- and multi-channel
// streams (the latter name the channel as the event type when the message has none), each
// bare or as an HTTP/1.1 chunk (streams written without nginx's filters).
class MessageFrames {
public:
    MessageFrames() = default;
    ~MessageFrames();
    MessageFrames(const MessageFrames &) = delete;
    MessageFrames &operator=(const MessageFrames &) = delete;

    Frame *&slot(bool named, bool chunked) { return variants_[(named ? 2 : 0) + (chunked ? 1 : 0)]; }

private:
    Frame *variants_[4] = {};
};

}  // namespace channels
