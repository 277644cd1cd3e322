// Parked long-poll requests: a waiting request gives up its nginx request and keeps only
// its connection and a small image of the request (SPEC §5, issue 13).
//
// A waiting HTTP/1.x request costs about 9 KB of worker memory (its pool of two 4 KB
// blocks, the header buffer), most of it for the request it only needs again when it
// answers. Parked, the request is freed without being logged; what the answer needs to
// be the same as an unparked one's is kept in one heap block: the request line and
// header lines as nginx parsed them, the location's configuration, the start time, the
// final URI, the variables already evaluated, regex captures, and the few request flags
// set before the content phase (keep-alive, limit_rate, ...). Bytes the client pipelined
// behind the request are kept too; bytes sent while parked stay in the kernel, as for a
// waiting request (nginx does not read them either).
//
// To answer, the request is re-created on its connection with ngx_http_create_request(),
// the saved lines are parsed again with nginx's own parsers and header handlers, the
// rest restored; then it is answered through the output filters and finalized like any
// request (access log once, keep-alive, pipelined requests).
//
// A client that closes while parked gets its request re-created just to be finalized
// with 499, as nginx would have done, so the access log has its line.
//
// Not parked (they wait as requests): HTTP/2 and HTTP/3 streams, HTTP/0.9, subrequests,
// requests with a body, requests holding any module context (the JWT module's, realip's,
// auth_request's, ...), pool cleanups (limit_conn, realip) or request cleanups other than
// the waiter's own, TLS connections with decrypted bytes pending, and pipelined bytes
// that do not fit the connection's header buffer.
#pragma once

#include "ngx_http_channels_delivery.h"

namespace channels {

struct ParkedRequest;

// The client of a parked request went away (or the worker closes the connection): the
// owner lets go of everything it holds, without touching the connection.
using ParkGone = void (*)(void *owner) noexcept;

// How long a waiting request keeps its request before it parks (ms). A first poll (no
// cursor: last_news_ms 0) or one whose cursor's message is a second old or more parks at
// once: its channels are quiet, its wait will likely be long. Others park after a second,
// so that waiters answered sooner, as on busy channels, never pay for parking and
// re-creating (about half the CPU time of a long-poll round trip); a client pays it once,
// for its first poll. The environment variable CHANNELS_PARK_AFTER (with
// `env CHANNELS_PARK_AFTER;`) sets that second for tests, and then also logs each park
// and re-creation at info level.
ngx_msec_t park_delay(uint64_t last_news_ms);

// Parking is two steps, so that the owner can move out of the request's pool in between:
// park_prepare() checks that r may park (it waits, its content handler returned NGX_DONE
// long ago, and cleanup_owner's is its only request cleanup) and makes the image; nullptr:
// not now, r is intact. park_commit() then frees r (not logged) and keeps its connection;
// owner and gone are told if the client goes away. park_cancel() drops an unused image.
ParkedRequest *park_prepare(ngx_http_request_t *r, void *cleanup_owner) noexcept;
void park_commit(ParkedRequest *p, ngx_http_request_t *r, void *owner, ParkGone gone) noexcept;
void park_cancel(ParkedRequest *p) noexcept;

// Moves a subscriber's place in the delivery (its links, onto the heap, and its queue
// entries) to another object that is a copy of it; false: memory is short, nothing moved.
// `from` must not be touched (awaiting on_flush()).
bool move_subscriber(Subscriber *from, Subscriber *to) noexcept;

// Re-creates the parked request on its connection, frees the image and returns the
// request, ready to be answered and finalized. nullptr: it could not be re-created (the
// connection was closed, or nginx already finalized the request with an error); the
// caller must not touch the connection then.
ngx_http_request_t *unpark_request(ParkedRequest *p) noexcept;

}  // namespace channels
