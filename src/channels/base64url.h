// base64url without padding (RFC 4648 §5, as JWS uses it: RFC 7515 §2). Pure logic.
#pragma once

#include <string>
#include <string_view>

namespace channels {

// Decodes strictly: only A-Z a-z 0-9 - _, no '=' padding, no whitespace, a length that
// is not 1 mod 4, and the unused low bits of the last character zero. So every byte
// string has exactly one accepted encoding (a token cannot be altered without changing
// its bytes). Appends to out; false (out unspecified) on anything else.
bool base64url_decode(std::string_view in, std::string &out);

// Appends the unpadded base64url encoding of bytes.
void append_base64url(std::string &out, std::string_view bytes);

}  // namespace channels
