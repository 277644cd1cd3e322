// JSON string escaping, UTF-8 validation and base64 (README "Publishing", "Long polling", "Statistics"). Pure logic.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace channels {

// True when s is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view s);

// Appends s as a quoted JSON string: '"' and '\\' escaped, control characters below 0x20
// as \n \r \t \b \f or \u00XX, DEL and all other bytes copied as they are (valid UTF-8 is
// passed through; callers base64 anything that is not valid UTF-8).
void append_json_string(std::string &out, std::string_view s);

// Appends standard base64 (RFC 4648, with '=' padding).
void append_base64(std::string &out, std::string_view bytes);

// Appends an unsigned decimal number.
void append_uint(std::string &out, uint64_t value);

}  // namespace channels
