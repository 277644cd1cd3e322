// A small strict JSON parser (RFC 8259) for token headers, claims and JWKS files.
// Pure logic. Strict where laxness could let two parsers disagree about a token: the
// whole text must be UTF-8 with no byte order mark, strings may not hold control
// characters or lone surrogates, numbers follow the grammar exactly, an object may not
// name a key twice, nothing may follow the value. Depth and size are bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace channels {

enum class JsonType : uint8_t { null, boolean, number, string, array, object };

struct JsonLimits {
    size_t max_depth = 16;      // nesting of arrays and objects
    size_t max_nodes = 4096;    // values, object keys included
};

// The parsed document as a flat array of nodes in document order: a container's
// children follow it, and each node knows where its subtree ends. An object's children
// alternate key (a string node) and value.
class JsonDoc {
public:
    struct Node {
        JsonType type = JsonType::null;
        bool     boolean = false;
        bool     integer = false;   // a number written without fraction or exponent that fits int64
        uint32_t end = 0;           // index one past this node's subtree
        uint32_t count = 0;         // array items, object members
        uint32_t str_at = 0;        // string: its decoded bytes in strings_
        uint32_t str_len = 0;
        int64_t  int_value = 0;
        double   number = 0;
    };

    // A position in the document; a default one (or a failed lookup) is "absent".
    class Ref {
    public:
        Ref() = default;
        Ref(const JsonDoc *doc, uint32_t index) : doc_(doc), index_(index) {}

        bool absent() const { return doc_ == nullptr; }
        JsonType type() const { return node().type; }
        bool is(JsonType t) const { return !absent() && type() == t; }
        bool boolean() const { return node().boolean; }
        double number() const { return node().number; }
        bool integer() const { return node().integer; }
        int64_t int_value() const { return node().int_value; }
        std::string_view string() const;
        size_t size() const { return node().count; }

        // Object member by key (absent when missing or this is not an object).
        Ref get(std::string_view key) const;
        // Array items / object members in order: item(i) walks from the start.
        template <typename Fn>
        void each_item(Fn &&fn) const {
            if (!is(JsonType::array)) return;
            uint32_t i = index_ + 1;
            for (uint32_t n = 0; n < node().count; n++, i = doc_->nodes_[i].end) fn(Ref(doc_, i));
        }
        template <typename Fn>
        void each_member(Fn &&fn) const {
            if (!is(JsonType::object)) return;
            uint32_t k = index_ + 1;
            for (uint32_t n = 0; n < node().count; n++) {
                fn(Ref(doc_, k).string(), Ref(doc_, k + 1));
                k = doc_->nodes_[k + 1].end;
            }
        }

    private:
        const Node &node() const { return doc_->nodes_[index_]; }
        const JsonDoc *doc_ = nullptr;
        uint32_t index_ = 0;
    };

    // Parses text. False on anything not strictly valid or over the limits; error()
    // then says what (a short phrase with the byte offset).
    bool parse(std::string_view text, JsonLimits limits = {});
    Ref root() const { return nodes_.empty() ? Ref() : Ref(this, 0); }
    const std::string &error() const { return error_; }
    size_t node_count() const { return nodes_.size(); }

private:
    friend class JsonParser;
    std::vector<Node> nodes_;
    std::string strings_;
    std::string error_;
};

}  // namespace channels
