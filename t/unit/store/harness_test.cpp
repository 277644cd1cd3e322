// The test tooling itself: the deep check finds what it claims to find, the stub pool
// charges what nginx's slab would, and the stub tree keeps order through deletes.
#include <algorithm>
#include <random>
#include <set>

#include "store_harness.h"

namespace storetest {
namespace {

using namespace channels::shm;

class Harness : public StoreTest {};

bool mentions(const std::vector<std::string> &problems, const std::string &what)
{
    return std::any_of(problems.begin(), problems.end(),
                       [&](const std::string &p) { return p.find(what) != std::string::npos; });
}

TEST_F(Harness, DeepCheckFindsCorruptedCounts)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto sub = w.subscribe({"a"});
    ASSERT_TRUE(w.publish("a", "x").ok());
    ASSERT_TRUE(w.publish("b", "y").ok());
    EXPECT_CONSISTENT(z);

    Channel *a = nullptr;
    Shared *sh = z.sh();
    for (ngx_rbtree_node_t *n = ngx_rbtree_min(sh->tree.root, sh->tree.sentinel); n != nullptr;
         n = ngx_rbtree_next(&sh->tree, n)) {
        if (reinterpret_cast<Channel *>(n)->name() == "a") a = reinterpret_cast<Channel *>(n);
    }
    ASSERT_NE(a, nullptr);

    a->subscribers++;
    EXPECT_TRUE(mentions(z.problems(), "subscribers, registries hold")) << join(z.problems());
    a->subscribers--;
    a->log_refs++;
    EXPECT_TRUE(mentions(z.problems(), "log_refs")) << join(z.problems());
    a->log_refs--;
    sh->message_bytes += 8;
    EXPECT_TRUE(mentions(z.problems(), "message_bytes")) << join(z.problems());
    sh->message_bytes -= 8;
    a->flags |= kPinned;
    EXPECT_TRUE(mentions(z.problems(), "left pinned")) << join(z.problems());
    a->flags &= ~kPinned;
    a->wake_bits ^= 2;
    EXPECT_TRUE(mentions(z.problems(), "wake bits wrong")) << join(z.problems());
    a->wake_bits ^= 2;
    EXPECT_CONSISTENT(z);
}

TEST_F(Harness, DeepCheckFindsLeakedBlocksAndChannels)
{
    TestZone z;
    Worker &w = z.add_worker();
    ASSERT_TRUE(w.publish("a", "x").ok());
    {
        As as(w);
        ngx_shmtx_lock(&z.pool->mutex);
        void *p = ngx_slab_alloc_locked(z.pool, 40);
        ngx_shmtx_unlock(&z.pool->mutex);
        EXPECT_TRUE(mentions(z.problems(), "a leak")) << join(z.problems());
        ngx_shmtx_lock(&z.pool->mutex);
        ngx_slab_free_locked(z.pool, p);
        ngx_shmtx_unlock(&z.pool->mutex);
    }
    EXPECT_CONSISTENT(z);
    // A channel with nothing left that holds it: what free_if_unused must have freed.
    Shared *sh = z.sh();
    auto *a = reinterpret_cast<Channel *>(sh->tree.root);
    uint32_t head = a->head_seq;
    a->head_seq = a->next_seq;   // an empty ring, no subscriber, no wake bit
    EXPECT_TRUE(mentions(z.problems(), "nothing holds")) << join(z.problems());
    a->head_seq = head;
}

TEST_F(Harness, StubChargesSlabSizesAndRefusesPastCapacity)
{
    EXPECT_EQ(ngxstub::slab_bytes(1), 8u);
    EXPECT_EQ(ngxstub::slab_bytes(9), 16u);
    EXPECT_EQ(ngxstub::slab_bytes(128), 128u);
    EXPECT_EQ(ngxstub::slab_bytes(2048), 2048u);
    EXPECT_EQ(ngxstub::slab_bytes(2049), 4096u);
    EXPECT_EQ(ngxstub::slab_bytes(8193), 12288u);
    for (size_t size : {1, 8, 9, 100, 128, 129, 2047, 2048, 2049, 4096, 4097, 100000}) {
        EXPECT_EQ(channels::shm::slab_size(size), ngxstub::slab_bytes(size)) << size;
    }
    ngx_slab_pool_t *pool = ngxstub::pool_create(8 * 4096);
    ngxstub::allow_unlocked(pool, true);
    void *a = ngx_slab_alloc_locked(pool, 5000);  // two pages
    void *b = ngx_slab_alloc_locked(pool, 6 * 4096);
    EXPECT_NE(a, nullptr);
    EXPECT_NE(b, nullptr);
    EXPECT_EQ(ngx_slab_alloc_locked(pool, 1), nullptr);
    EXPECT_EQ(ngxstub::allocs_failed(pool), 1u);
    ngx_slab_free_locked(pool, a);
    EXPECT_NE(ngx_slab_alloc_locked(pool, 1), nullptr);
    EXPECT_EQ(ngxstub::live_bytes(pool), 6 * 4096u + 8);
    ngxstub::pool_destroy(pool);
}

void insert_by_key(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    for (;;) {
        ngx_rbtree_node_t **p = node->key < temp->key ? &temp->left : &temp->right;
        if (*p == sentinel) {
            *p = node;
            break;
        }
        temp = *p;
    }
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}

TEST_F(Harness, StubTreeKeepsOrderThroughDeletes)
{
    struct Node {
        ngx_rbtree_node_t node;
    };
    ngx_rbtree_t tree;
    ngx_rbtree_node_t sentinel;
    ngx_rbtree_init(&tree, &sentinel, insert_by_key);
    std::vector<Node> nodes(500);
    std::mt19937 rng(7);
    std::vector<ngx_rbtree_key_t> keys;
    for (size_t i = 0; i < nodes.size(); i++) keys.push_back(i * 3);
    std::shuffle(keys.begin(), keys.end(), rng);
    for (size_t i = 0; i < nodes.size(); i++) {
        nodes[i].node.key = keys[i];
        ngx_rbtree_insert(&tree, &nodes[i].node);
    }
    std::vector<size_t> order(nodes.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::set<ngx_rbtree_key_t> left(keys.begin(), keys.end());
    for (size_t k = 0; k < order.size(); k++) {
        ngx_rbtree_delete(&tree, &nodes[order[k]].node);
        left.erase(keys[order[k]]);
        if (k % 50 != 0 && k + 1 != order.size()) continue;
        std::vector<ngx_rbtree_key_t> walked;
        if (tree.root != &sentinel) {
            for (ngx_rbtree_node_t *n = ngx_rbtree_min(tree.root, &sentinel); n != nullptr;
                 n = ngx_rbtree_next(&tree, n)) {
                walked.push_back(n->key);
            }
        }
        EXPECT_EQ(walked, std::vector<ngx_rbtree_key_t>(left.begin(), left.end()));
    }
    EXPECT_EQ(tree.root, &sentinel);
}

}  // namespace
}  // namespace storetest
