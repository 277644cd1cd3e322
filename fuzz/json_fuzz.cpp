// UTF-8 validation against a code-point reference decoder; JSON string round trip for
// valid UTF-8; base64 round trip for any bytes; decimal numbers.
#include <cstring>
#include <string>
#include <string_view>

#include "channels/json.h"
#include "fuzz_check.h"
#include "json_decode_for_tests.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string_view s(reinterpret_cast<const char *>(data), size);

    bool valid = channels::is_valid_utf8(s);
    FUZZ_CHECK(valid == json_test::reference_valid_utf8(s));

    std::string js = "[";
    channels::append_json_string(js, s);
    std::string_view literal = std::string_view(js).substr(1);
    for (char c : literal) FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20);
    if (valid) FUZZ_CHECK(json_test::decode_json_string(literal) == std::string(s));

    std::string b64 = "=";
    channels::append_base64(b64, s);
    FUZZ_CHECK(b64.size() == 1 + (size + 2) / 3 * 4);
    FUZZ_CHECK(json_test::decode_base64(std::string_view(b64).substr(1)) == std::string(s));

    uint64_t v = 0;
    if (size != 0) std::memcpy(&v, data, size < 8 ? size : 8);
    std::string num;
    channels::append_uint(num, v);
    FUZZ_CHECK(num == std::to_string(v));
    return 0;
}
