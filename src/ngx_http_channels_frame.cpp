// Frames (see ngx_http_channels_frame.h).

#include "ngx_http_channels_frame.h"

namespace channels {
namespace {

Frame *constant_frames[3];   // ping (bare, chunked), end of a chunked body

Frame *constant(size_t which, std::string_view bytes) noexcept {
    if (constant_frames[which] == nullptr) constant_frames[which] = frame_new(bytes, false);
    return constant_frames[which];
}

}  // namespace

Frame *frame_alloc(size_t body_len, bool chunked, u_char **body) noexcept {
    u_char head[NGX_OFF_T_LEN + 2];
    size_t head_len = chunked ? size_t(ngx_sprintf(head, "%xz\r\n", body_len) - head) : 0;
    size_t len = head_len + body_len + (chunked ? 2 : 0);
    if (len > UINT32_MAX) return nullptr;
    auto *f = static_cast<Frame *>(ngx_alloc(offsetof(Frame, data) + len, ngx_cycle->log));
    if (f == nullptr) return nullptr;
    f->refs = 1;
    f->len = uint32_t(len);
    *body = ngx_cpymem(f->data, head, head_len);
    if (chunked) ngx_memcpy(*body + body_len, "\r\n", 2);
    return f;
}

Frame *frame_new(std::string_view bytes, bool chunked) noexcept {
    u_char *body;
    Frame *f = frame_alloc(bytes.size(), chunked, &body);
    if (f != nullptr && !bytes.empty()) ngx_memcpy(body, bytes.data(), bytes.size());
    return f;
}

void frame_unref(Frame *f) noexcept {
    if (f != nullptr && --f->refs == 0) ngx_free(f);
}

Frame *ping_frame(bool chunked) noexcept {
    return chunked ? constant(1, "3\r\n:\n\n\r\n") : constant(0, ":\n\n");
}

Frame *end_frame() noexcept { return constant(2, "0\r\n\r\n"); }

MessageFrames::~MessageFrames() {
    for (Frame *f : variants_) frame_unref(f);
}

}  // namespace channels
