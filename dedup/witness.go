package dedup

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/pecgw/pecgw/logstore"
)

// RedisWitness keeps a log's witness (logstore.Witness) in the Redis of
// the dedup store, under pecgw:log-head:<name>: every instance that
// shares the store so keeps the heads of the others' logs beside its
// own, out of reach of anyone who has only one instance's disk
// (docs/logformat.md, "Witnesses").
type RedisWitness struct {
	r    *Redis
	name string
}

// Witness returns the witness of the log named name.
func (r *Redis) Witness(name string) *RedisWitness { return &RedisWitness{r: r, name: name} }

func (w *RedisWitness) key() string { return "pecgw:log-head:" + w.name }

func (w *RedisWitness) String() string { return "redis witness key " + w.key() }

// Load returns the head kept, logstore.ErrNoWitness if none.
func (w *RedisWitness) Load(ctx context.Context) (*logstore.WitnessHead, error) {
	ctx, cancel := context.WithTimeout(ctx, w.r.timeout)
	defer cancel()
	b, err := w.r.client.Get(ctx, w.key()).Bytes()
	if err == redis.Nil {
		return nil, logstore.ErrNoWitness
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", w, err)
	}
	var h logstore.WitnessHead
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: not a witness head: %w", w, err)
	}
	return &h, nil
}

// storeHead replaces the head if the new one is later (ARGV[2] = "1":
// in any case): one script, so two writers never go backwards.
var storeHead = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[2] ~= '1' then
  local ok, h = pcall(cjson.decode, cur)
  if ok and type(h) == 'table' and tonumber(h.seq) and tonumber(h.seq) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
`)

// Store keeps h unless a later head is kept.
func (w *RedisWitness) Store(ctx context.Context, h *logstore.WitnessHead) error {
	return w.store(ctx, h, false)
}

// Reset keeps h whatever was kept (pecgw log accept-loss).
func (w *RedisWitness) Reset(ctx context.Context, h *logstore.WitnessHead) error {
	return w.store(ctx, h, true)
}

func (w *RedisWitness) store(ctx context.Context, h *logstore.WitnessHead, force bool) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	f := "0"
	if force {
		f = "1"
	}
	ctx, cancel := context.WithTimeout(ctx, w.r.timeout)
	defer cancel()
	if err := storeHead.Run(ctx, w.r.client, []string{w.key()}, string(b), f, h.Seq).Err(); err != nil {
		return fmt.Errorf("%s: %w", w, err)
	}
	return nil
}
