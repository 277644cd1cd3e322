// Answers of the publish endpoint, shared by the local and the Redis publish paths.
#pragma once

#include <string>
#include <string_view>

#include "ngx_http_channels_store.h"

namespace chn {

// {"channel","id","subscribers","messages"} of a 201.
std::string published_json(std::string_view channel, const PublishResult &res);
// {"channel","messages","subscribers","last_event_id","oldest_event_id"} of GET and DELETE.
std::string info_json(std::string_view channel, const ChannelInfo &info);

}  // namespace chn
