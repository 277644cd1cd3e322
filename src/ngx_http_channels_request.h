// Request helpers shared by the content handlers: channel lists, cursors, arguments and
// headers, short answers.
#pragma once

#include <string_view>

#include "ngx_http_channels.h"

namespace channels {

struct ChannelArgs {
    ChannelList list;
    ListError error = ListError::none;
};

// Evaluates the location's CHANNEL values: percent-decoded, a one-variable value split on
// commas, a composed value taken as one id; validated against channel_max_per_request.
// NGX_ERROR on an internal failure; args.error tells a client error.
ngx_int_t eval_channels(ngx_http_request_t *r, const LocConf *lcf, ChannelArgs &args);
// Common start of subscriber requests: GET/HEAD only (405 otherwise), body discarded,
// channels evaluated (400 when bad). true: go on; false: answered, return *rc. Refusals
// carry Cache-Control: no-cache, and Last-Event-ID: *cursor when given (long-poll).
bool subscriber_prelude(ngx_http_request_t *r, ChannelArgs &args, ngx_int_t *rc, const MessageId *cursor = nullptr);
// Watches a parked request for the client's close (ngx_http_test_reading). A close that
// arrived while the request was being read raised no new edge-triggered event, so a read
// event already ready is run once, posted.
void watch_client_close(ngx_http_request_t *r);
bool has_arg(ngx_http_request_t *r, std::string_view name);
// A request header's value by name (case-insensitive), or an empty string.
ngx_str_t find_header(ngx_http_request_t *r, std::string_view name);
// A percent-decoded query argument (allocated from r->pool); found == false when absent.
ngx_int_t decoded_arg(ngx_http_request_t *r, std::string_view name, ngx_str_t *value, bool *found);
// The cursor a subscriber sent (Last-Event-ID header or last_event_id argument), if valid.
bool request_cursor(ngx_http_request_t *r, MessageId *cursor);
// Sends a short text/plain answer with one line; for 4xx, also logs it at info.
ngx_int_t send_text(ngx_http_request_t *r, ngx_uint_t status, std::string_view line);
// Sends a complete in-memory body with the given content type (copied once).
ngx_int_t send_body(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type,
                    std::string_view body);
// Sends a prepared buffer as the whole body.
ngx_int_t send_buffer(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type, ngx_buf_t *b);
// Adds a response header (name and value copied into r->pool).
ngx_int_t add_header(ngx_http_request_t *r, std::string_view name, std::string_view value);
ngx_int_t add_cursor_header(ngx_http_request_t *r, MessageId id);
// A subscriber refused for lack of room: 503 with Retry-After, logged at
// channel_refusal_log_level.
ngx_int_t send_unavailable(ngx_http_request_t *r, std::string_view reason);
// The answer to a subscribe the store refused (404 or 503), with Cache-Control: no-cache.
ngx_int_t send_refusal(ngx_http_request_t *r, SubscribeStatus status, std::string_view channel);
// channel_existing_only: the first channel of the list that does not exist, for answers
// given without subscribing (HEAD); nullptr when all do (or the check is off).
const std::string_view *missing_channel(ngx_http_request_t *r, const ChannelArgs &args);

}  // namespace channels
