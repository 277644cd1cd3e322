// SSE framing (README "SSE") checked byte for byte and through a WHATWG-style parser.
#include "channels/sse_format.h"

#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <string>

#include "sse_parse_for_tests.h"

using namespace std::string_literals;

namespace {

std::string event(std::string_view id, std::string_view type, std::string_view data)
{
    std::string out;
    channels::append_sse_event(out, id, type, data);
    EXPECT_EQ(out.size(), channels::sse_event_size(id, type, data));
    return out;
}

// Frames one event and parses it back, expecting exactly that one event.
sse_test::Event round_trip(std::string_view id, std::string_view type, std::string_view data)
{
    sse_test::Stream s = sse_test::parse(event(id, type, data));
    EXPECT_EQ(s.events.size(), 1u);
    EXPECT_TRUE(s.unterminated.empty());
    EXPECT_FALSE(s.pending_fields);
    return s.events.empty() ? sse_test::Event{} : s.events[0];
}

std::string random_bytes(std::mt19937 &rng, size_t max_len)
{
    // Biased toward the bytes that matter to framing.
    static const std::string special = "\r\n\r\n \n\r:\0\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80:d"s;
    std::string s;
    size_t len = rng() % (max_len + 1);
    for (size_t i = 0; i < len; i++) {
        s.push_back(rng() % 2 ? special[rng() % special.size()] : static_cast<char>(rng() % 256));
    }
    return s;
}

}  // namespace

TEST(SseEvent, ExactBytes)
{
    EXPECT_EQ(event("1-0", "", "hello"), "id: 1-0\ndata: hello\n\n");
    EXPECT_EQ(event("1-0", "news", "hello"), "id: 1-0\nevent: news\ndata: hello\n\n");
    EXPECT_EQ(event("1-0", "", "a\nb"), "id: 1-0\ndata: a\ndata: b\n\n");
}

TEST(SseEvent, EmptyDataStillHasOneDataLine)
{
    EXPECT_EQ(event("5-1", "", ""), "id: 5-1\ndata: \n\n");
    sse_test::Event e = round_trip("5-1", "", "");
    EXPECT_EQ(e.data, "");
    EXPECT_EQ(e.type, "message");
}

TEST(SseEvent, EmptyIdWritesNoIdLine)
{
    EXPECT_EQ(event("", "channel-gap", "{}"), "event: channel-gap\ndata: {}\n\n");
    // And so the client keeps its cursor.
    sse_test::Stream s = sse_test::parse(event("9-0", "", "x") + event("", "channel-gap", "{}"));
    ASSERT_EQ(s.events.size(), 2u);
    EXPECT_EQ(s.events[1].last_event_id, "9-0");
    EXPECT_EQ(s.last_event_id, "9-0");
}

TEST(SseEvent, LineBreakKinds)
{
    EXPECT_EQ(event("1", "", "a\r\nb"), "id: 1\ndata: a\ndata: b\n\n");
    EXPECT_EQ(event("1", "", "a\rb"), "id: 1\ndata: a\ndata: b\n\n");
    EXPECT_EQ(event("1", "", "a\n\rb"), "id: 1\ndata: a\ndata: \ndata: b\n\n");
    EXPECT_EQ(event("1", "", "a\r\rb"), "id: 1\ndata: a\ndata: \ndata: b\n\n");
    EXPECT_EQ(event("1", "", "a\n\nb"), "id: 1\ndata: a\ndata: \ndata: b\n\n");
    EXPECT_EQ(event("1", "", "a\r\n\r\nb"), "id: 1\ndata: a\ndata: \ndata: b\n\n");
}

TEST(SseEvent, BreaksAtTheEnds)
{
    EXPECT_EQ(event("1", "", "a\n"), "id: 1\ndata: a\ndata: \n\n");
    EXPECT_EQ(event("1", "", "a\r\n"), "id: 1\ndata: a\ndata: \n\n");
    EXPECT_EQ(event("1", "", "a\r"), "id: 1\ndata: a\ndata: \n\n");
    EXPECT_EQ(event("1", "", "\na"), "id: 1\ndata: \ndata: a\n\n");
    EXPECT_EQ(event("1", "", "\r"), "id: 1\ndata: \ndata: \n\n");
    EXPECT_EQ(event("1", "", "\r\n"), "id: 1\ndata: \ndata: \n\n");
    EXPECT_EQ(round_trip("1", "", "a\n").data, "a\n");
    EXPECT_EQ(round_trip("1", "", "a\r").data, "a\n");
    EXPECT_EQ(round_trip("1", "", "a\r\n").data, "a\n");
    EXPECT_EQ(round_trip("1", "", "\r\n\r\n").data, "\n\n");
}

TEST(SseEvent, CrAtTheEndOfTheViewIsNotJoinedWithWhatFollows)
{
    // A lone CR ending the data is one break even if the caller's buffer goes on with LF.
    const std::string buf = "a\r\nb";
    std::string_view data = std::string_view(buf).substr(0, 2);
    EXPECT_EQ(event("1", "", data), "id: 1\ndata: a\ndata: \n\n");
}

TEST(SseEvent, LinesKeepLeadingSpacesAndColons)
{
    EXPECT_EQ(event("1", "", " x"), "id: 1\ndata:  x\n\n");
    EXPECT_EQ(round_trip("1", "", " x").data, " x");
    EXPECT_EQ(round_trip("1", "", "  two\n three").data, "  two\n three");
    EXPECT_EQ(round_trip("1", "", ":not a comment").data, ":not a comment");
    EXPECT_EQ(round_trip("1", "", "data: x").data, "data: x");
    EXPECT_EQ(round_trip("1", "", "\n:x\n").data, "\n:x\n");
}

TEST(SseEvent, NulAndUtf8PassThrough)
{
    std::string data = "a\0b\n\0\xC3\xA9\xF0\x9F\x98\x80\r\n\xE2\x82\xAC"s;
    EXPECT_EQ(event("1", "", data),
              "id: 1\ndata: a\0b\ndata: \0\xC3\xA9\xF0\x9F\x98\x80\ndata: \xE2\x82\xAC\n\n"s);
    EXPECT_EQ(round_trip("1", "", data).data, sse_test::normalize_breaks(data));
}

TEST(SseEvent, EventTypeAndIdAsTheClientSeesThem)
{
    sse_test::Event e = round_trip("1732290000123-7", "user.joined", "{}");
    EXPECT_EQ(e.type, "user.joined");
    EXPECT_EQ(e.last_event_id, "1732290000123-7");
    EXPECT_EQ(round_trip("1", " spaced", "x").type, " spaced");
    EXPECT_EQ(round_trip("1", "a:b", "x").type, "a:b");
}

TEST(SseEvent, AppendsAfterExistingBytes)
{
    std::string out = "prefix";
    channels::append_sse_event(out, "2-0", "", "x");
    EXPECT_EQ(out, "prefixid: 2-0\ndata: x\n\n");
}

TEST(SseEvent, SizeMatchesForLargeManyLineData)
{
    std::string data;
    for (int i = 0; i < 10000; i++) data += (i % 3 == 0 ? "\r\n" : i % 3 == 1 ? "\r" : "\n");
    EXPECT_EQ(event("1-0", "e", data).size(), channels::sse_event_size("1-0", "e", data));
    EXPECT_EQ(round_trip("1-0", "e", data).data, sse_test::normalize_breaks(data));
}

TEST(SseEvent, RandomRoundTripThroughParser)
{
    std::mt19937 rng(424242);
    for (int i = 0; i < 20000; i++) {
        std::string data = random_bytes(rng, i % 10 == 0 ? 300 : 12);
        std::string id = i % 7 == 0 ? "" : std::to_string(rng()) + "-" + std::to_string(rng() % 5);
        std::string type = i % 3 == 0 ? "" : "t" + std::to_string(rng() % 100);
        std::string framed = event(id, type, data);
        ASSERT_EQ(framed.find('\r'), std::string::npos);  // we never write a CR
        sse_test::Stream s = sse_test::parse(framed);
        ASSERT_EQ(s.events.size(), 1u);
        ASSERT_EQ(s.events[0].data, sse_test::normalize_breaks(data));
        ASSERT_EQ(s.events[0].type, type.empty() ? "message" : type);
        ASSERT_EQ(s.events[0].last_event_id, id);
        ASSERT_TRUE(s.unterminated.empty());
    }
}

TEST(SseStream, ManyEventsWithCommentsAndRetry)
{
    std::mt19937 rng(5);
    std::string stream;
    channels::append_sse_retry(stream, 2500);
    std::vector<std::string> datas;
    for (int i = 0; i < 200; i++) {
        if (i % 10 == 0) channels::append_sse_comment(stream, i % 20 ? "" : "ping");
        datas.push_back(random_bytes(rng, 40));
        channels::append_sse_event(stream, std::to_string(i) + "-0", i % 2 ? "odd" : "", datas.back());
    }
    sse_test::Stream s = sse_test::parse(stream);
    ASSERT_EQ(s.events.size(), datas.size());
    for (size_t i = 0; i < datas.size(); i++) {
        EXPECT_EQ(s.events[i].data, sse_test::normalize_breaks(datas[i]));
        EXPECT_EQ(s.events[i].last_event_id, std::to_string(i) + "-0");
        EXPECT_EQ(s.events[i].type, i % 2 ? "odd" : "message");
    }
    EXPECT_EQ(s.retry, 2500u);
    EXPECT_EQ(s.comments, 20u);
    EXPECT_EQ(s.last_event_id, "199-0");
}

TEST(SseComment, Forms)
{
    std::string out;
    channels::append_sse_comment(out, "");
    EXPECT_EQ(out, ":\n\n");
    out.clear();
    channels::append_sse_comment(out, " ping");
    EXPECT_EQ(out, ": ping\n\n");
    sse_test::Stream s = sse_test::parse(out);
    EXPECT_TRUE(s.events.empty());
    ASSERT_EQ(s.comments, 1u);
    EXPECT_EQ(s.comment_texts[0], " ping");
    EXPECT_TRUE(s.unterminated.empty());
}

TEST(SseRetry, Forms)
{
    for (uint64_t ms : {uint64_t{0}, uint64_t{1}, uint64_t{3000}, std::numeric_limits<uint64_t>::max()}) {
        std::string out;
        channels::append_sse_retry(out, ms);
        EXPECT_EQ(out, "retry: " + std::to_string(ms) + "\n\n");
        sse_test::Stream s = sse_test::parse(out);
        EXPECT_EQ(s.retry, ms);
        EXPECT_TRUE(s.events.empty());
    }
}

// The test parser itself, against the event-stream examples of the WHATWG standard.
TEST(SseTestParser, BehavesLikeTheStandard)
{
    auto a = sse_test::parse("data: YHOO\ndata: +2\ndata: 10\n\n");
    ASSERT_EQ(a.events.size(), 1u);
    EXPECT_EQ(a.events[0].data, "YHOO\n+2\n10");

    auto b = sse_test::parse(": test stream\n\ndata: first event\nid: 1\n\n"
                             "data:second event\nid\n\ndata:  third event\n\n");
    ASSERT_EQ(b.events.size(), 3u);
    EXPECT_EQ(b.events[0].last_event_id, "1");
    EXPECT_EQ(b.events[1].data, "second event");
    EXPECT_EQ(b.events[1].last_event_id, "");
    EXPECT_EQ(b.events[2].data, " third event");

    auto c = sse_test::parse("data\n\ndata\ndata\n\ndata:");
    ASSERT_EQ(c.events.size(), 2u);
    EXPECT_EQ(c.events[0].data, "");
    EXPECT_EQ(c.events[1].data, "\n");
    EXPECT_EQ(c.unterminated, "data:");

    auto d = sse_test::parse("data:test\r\n\r\ndata: test\r\r");
    ASSERT_EQ(d.events.size(), 2u);
    EXPECT_EQ(d.events[0].data, "test");
    EXPECT_EQ(d.events[1].data, "test");

    // No data field: nothing is dispatched. Unfinished event at the end: discarded.
    EXPECT_TRUE(sse_test::parse("event: x\n\n").events.empty());
    EXPECT_TRUE(sse_test::parse("data: x\n").events.empty());
    EXPECT_TRUE(sse_test::parse("data: x\n").pending_fields);
    EXPECT_EQ(sse_test::parse("id: a\0b\ndata: x\n\n"s).events.at(0).last_event_id, "");
}

// The size guessed without looking for line breaks: exact for data without them, below the
// real size for data with them (a replay page checks it while writing, with a BoundedSink).
TEST(SseFormat, UnbrokenSizeIsExactWithoutBreaksAndALowerBoundWith)
{
    for (std::string_view data : {"", "x", "one line of data", " leading space"}) {
        for (std::string_view event : {"", "update"}) {
            EXPECT_EQ(channels::sse_event_size_unbroken(5, event, data.size()),
                      channels::sse_event_size("12-34", event, data));
            EXPECT_EQ(channels::sse_event_size_unbroken(0, event, data.size()), channels::sse_event_size("", event, data));
        }
    }
    for (std::string_view data : {"a\nb", "a\r\nb", "\r", "\n\n\n", "a\rb\nc\r\n"}) {
        EXPECT_LT(channels::sse_event_size_unbroken(5, "e", data.size()), channels::sse_event_size("12-34", "e", data));
    }
}

TEST(SseFormat, BoundedSinkIsFilledOnlyByExactlyItsSize)
{
    char buf[8];
    channels::BoundedSink exact(buf, 4);
    exact.put(std::string_view("abc"));
    EXPECT_FALSE(exact.filled());
    exact.put('d');
    EXPECT_TRUE(exact.filled());
    EXPECT_EQ(std::string(buf, 4), "abcd");

    channels::BoundedSink over(buf, 4);
    over.put(std::string_view("abc"));
    over.put(std::string_view("de"));   // does not fit: dropped
    over.put('f');                      // fits the byte left, but the sink overflowed
    EXPECT_FALSE(over.filled());

    char small[2] = {'Z', 'Z'};
    channels::BoundedSink one(small, 1);
    one.put('a');
    one.put('b');
    EXPECT_FALSE(one.filled());
    EXPECT_EQ(small[1], 'Z') << "wrote past its size";
}
