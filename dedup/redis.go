package dedup

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions configures the Redis store. One address is a standalone
// server, several a Cluster; MasterName selects Sentinel (Addrs are then
// the sentinels), as redis.NewUniversalClient decides.
type RedisOptions struct {
	Addrs      []string
	MasterName string // Sentinel: the monitored master's name
	Username   string
	Password   string
	DB         int
	TLS        *tls.Config
	// Timeout bounds every call, on top of the caller's context
	// (default 500 ms): a slow or lost Redis becomes ErrUnavailable, and
	// the client a 4xx, instead of a hung session.
	Timeout time.Duration
}

// Redis is a Store in Redis, shared by several gateway instances.
//
// Keys, all of one ID in one Cluster hash slot thanks to the {id} tag:
//
//	pecgw:dedup:{id}:lease    the lease owner's token, expiring with the lease;
//	                          a hold is "P <token> <PEC id>", expiring with the window
//	pecgw:dedup:{id}:fp:<fp>  a committed PEC identifier, expiring with the window
//	pecgw:dedup:{id}:any      present while any fingerprint of id is committed
//
// Each call is one Lua script, so it is atomic on the server.
type Redis struct {
	client  redis.UniversalClient
	timeout time.Duration
}

const redisPrefix = "pecgw:dedup:"

// NewRedis returns a Redis store. It does not contact the server: the first
// call does (use CheckConfig at start-up to check it).
func NewRedis(opts RedisOptions) (*Redis, error) {
	if len(opts.Addrs) == 0 {
		return nil, errors.New("dedup: redis: no address")
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 500 * time.Millisecond
	}
	client := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 opts.Addrs,
		MasterName:            opts.MasterName,
		Username:              opts.Username,
		Password:              opts.Password,
		DB:                    opts.DB,
		TLSConfig:             opts.TLS,
		DialTimeout:           timeout,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		ContextTimeoutEnabled: true,
	})
	return &Redis{client: client, timeout: timeout}, nil
}

func redisKeys(k Key) []string {
	return redisKeysOf(k.ID(), k.Fingerprint())
}

func redisKeysOf(id, fp string) []string {
	base := redisPrefix + "{" + id + "}:"
	return []string{base + "lease", base + "fp:" + fp, base + "any"}
}

// Lua helper shared by the scripts: owns(cur, token) tells whether the
// lease value cur (a token, or a hold "P <token> <PEC id>") is token's;
// held(cur) returns the PEC id of a hold, or nil.
const luaLease = `
local function owns(cur, token)
	if not cur then return false end
	if cur == token then return true end
	return string.sub(cur, 1, #token + 3) == 'P ' .. token .. ' '
end
local function held(cur)
	if not cur then return nil end
	return string.match(cur, '^P %S+ (.+)$')
end
`

// KEYS: lease, fp, any. ARGV: token, lease ms.
var claimScript = redis.NewScript(luaLease + `
local pec = redis.call('GET', KEYS[2])
if pec then return {'D', pec} end
local cur = redis.call('GET', KEYS[1])
if cur then return {'I', held(cur) or ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'R', ''} end
return {'N', ''}
`)

// KEYS: lease. ARGV: token, lease ms.
var renewScript = redis.NewScript(luaLease + `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
	return 1
end
if owns(cur, ARGV[1]) then return 1 end
return 0
`)

// KEYS: lease. ARGV: token, PEC id, hold ms.
var prepareScript = redis.NewScript(luaLease + `
local cur = redis.call('GET', KEYS[1])
local hold = 'P ' .. ARGV[1] .. ' ' .. ARGV[2]
if cur ~= ARGV[1] and cur ~= hold then return 0 end
redis.call('SET', KEYS[1], hold, 'PX', ARGV[3])
return 1
`)

// KEYS: lease, fp, any. ARGV: token, PEC id, window ms.
var commitScript = redis.NewScript(luaLease + `
local cur = redis.call('GET', KEYS[1])
if cur and not owns(cur, ARGV[1]) then return 0 end
local window = tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', window)
if redis.call('PTTL', KEYS[3]) < window then
	redis.call('SET', KEYS[3], '1', 'PX', window)
end
if cur then redis.call('DEL', KEYS[1]) end
return 1
`)

// KEYS: lease, fp, any. ARGV: PEC id, window ms. A committed entry of
// another PEC id is kept: it was certified by a transaction that knew its
// envelope went out, which a reconciliation cannot say as surely.
var rememberScript = redis.NewScript(luaLease + `
local window = tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[2])
if not cur or cur == ARGV[1] then
	redis.call('SET', KEYS[2], ARGV[1], 'PX', window)
	if redis.call('PTTL', KEYS[3]) < window then
		redis.call('SET', KEYS[3], '1', 'PX', window)
	end
end
if held(redis.call('GET', KEYS[1])) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`)

// KEYS: lease, fp. ARGV: PEC id.
var traceScript = redis.NewScript(luaLease + `
if redis.call('GET', KEYS[2]) == ARGV[1] then return 'C' end
if held(redis.call('GET', KEYS[1])) == ARGV[1] then return 'H' end
return 'N'
`)

// KEYS: lease, fp. ARGV: PEC id, hold ms. The hold's owner token is
// "reconciled": no transaction of any process owns it.
var holdScript = redis.NewScript(luaLease + `
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], 'P reconciled ' .. ARGV[1], 'PX', ARGV[2])
return 1
`)

// KEYS: lease. ARGV: PEC id.
var abandonScript = redis.NewScript(luaLease + `
if held(redis.call('GET', KEYS[1])) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`)

// KEYS: lease. ARGV: token.
var releaseScript = redis.NewScript(luaLease + `
local cur = redis.call('GET', KEYS[1])
if not cur then return 1 end
if not owns(cur, ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
`)

// Claim implements Store.
func (r *Redis) Claim(ctx context.Context, k Key, lease time.Duration) (Claim, error) {
	token, err := newToken()
	if err != nil {
		return Claim{}, fmt.Errorf("dedup: lease token: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := claimScript.Run(ctx, r.client, redisKeys(k), token, millis(lease)).StringSlice()
	if err != nil {
		return Claim{}, redisErr("claim", err)
	}
	if len(res) != 2 {
		return Claim{}, fmt.Errorf("dedup: redis claim: unexpected reply %q", res)
	}
	switch res[0] {
	case "D":
		return Claim{State: Duplicate, PECID: res[1]}, nil
	case "I":
		return Claim{State: InFlight, PECID: res[1]}, nil
	case "R":
		return Claim{State: Reused, Token: token}, nil
	case "N":
		return Claim{State: New, Token: token}, nil
	}
	return Claim{}, fmt.Errorf("dedup: redis claim: unexpected reply %q", res)
}

// Commit implements Store. Durable means acknowledged by the master: with
// replicas, a failover right after may lose it (see WAIT).
func (r *Redis) Commit(ctx context.Context, k Key, token, pecID string, window time.Duration) error {
	return r.ownerScript(ctx, "commit", commitScript, redisKeys(k), token, pecID, millis(window))
}

// Renew implements Store.
func (r *Redis) Renew(ctx context.Context, k Key, token string, lease time.Duration) error {
	return r.ownerScript(ctx, "renew", renewScript, redisKeys(k)[:1], token, millis(lease))
}

// Prepare implements Store. Durable as Commit is.
func (r *Redis) Prepare(ctx context.Context, k Key, token, pecID string, hold time.Duration) error {
	return r.ownerScript(ctx, "prepare", prepareScript, redisKeys(k)[:1], token, pecID, millis(hold))
}

// ownerScript runs a script answering 1 (done) or 0 (ErrNotOwner).
func (r *Redis) ownerScript(ctx context.Context, op string, s *redis.Script, keys []string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	n, err := s.Run(ctx, r.client, keys, args...).Int()
	if err != nil {
		return redisErr(op, err)
	}
	if n != 1 {
		return ErrNotOwner
	}
	return nil
}

// Remember implements Store: the commit script's writes without the lease
// check; a hold naming pecID is dropped, any other lease left alone.
// Durable as Commit is.
func (r *Redis) Remember(ctx context.Context, id, fingerprint, pecID string, window time.Duration) error {
	if id == "" || fingerprint == "" {
		return errors.New("dedup: remember: empty id or fingerprint")
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := rememberScript.Run(ctx, r.client, redisKeysOf(id, fingerprint), pecID, millis(window)).Err(); err != nil {
		return redisErr("remember", err)
	}
	return nil
}

// Trace implements Store. Redis outlives the process, so TraceNone after
// a crash means the transaction never took its hold (Prepare), which
// comes before the envelope hand-off — provided Redis keeps what it
// acknowledged (persistence, no eviction) and the window has not passed.
func (r *Redis) Trace(ctx context.Context, id, fingerprint, pecID string) (Trace, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := traceScript.Run(ctx, r.client, redisKeysOf(id, fingerprint)[:2], pecID).Text()
	if err != nil {
		return TraceUnknown, redisErr("trace", err)
	}
	switch res {
	case "C":
		return TraceCommitted, nil
	case "H":
		return TraceHeld, nil
	case "N":
		return TraceNone, nil
	}
	return TraceUnknown, fmt.Errorf("dedup: redis trace: unexpected reply %q", res)
}

// Hold implements Store.
func (r *Redis) Hold(ctx context.Context, id, fingerprint, pecID string, hold time.Duration) error {
	if id == "" || fingerprint == "" || pecID == "" {
		return errors.New("dedup: hold: empty id, fingerprint or PEC identifier")
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := holdScript.Run(ctx, r.client, redisKeysOf(id, fingerprint)[:2], pecID, millis(hold)).Err(); err != nil {
		return redisErr("hold", err)
	}
	return nil
}

// Abandon implements Store.
func (r *Redis) Abandon(ctx context.Context, id, pecID string) error {
	if id == "" || pecID == "" {
		return errors.New("dedup: abandon: empty id or PEC identifier")
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	// The fingerprint is not needed: only the lease key is touched.
	if err := abandonScript.Run(ctx, r.client, redisKeysOf(id, "-")[:1], pecID).Err(); err != nil {
		return redisErr("abandon", err)
	}
	return nil
}

// Release implements Store.
func (r *Redis) Release(ctx context.Context, k Key, token string) error {
	return r.ownerScript(ctx, "release", releaseScript, redisKeys(k)[:1], token)
}

// Close implements Store.
func (r *Redis) Close() error { return r.client.Close() }

// CheckConfig reads the settings that decide whether Redis keeps what it
// acknowledged: maxmemory-policy (unless noeviction, committed entries may
// be evicted under memory pressure) and persistence (without the
// append-only file, a restart of Redis loses the last commits, or all of
// them without snapshots either). Either way a retry would then be
// certified twice. It returns one warning per problem, none when all is
// well; err is set only when Redis cannot be reached. When CONFIG is not
// allowed (managed services, ACLs) the warning says the settings could
// not be checked.
func (r *Redis) CheckConfig(ctx context.Context) (warnings []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	const consequence = "committed submissions may be lost and their retries certified twice"
	get := func(key string) (string, bool, error) {
		res, err := r.client.ConfigGet(ctx, key).Result()
		if err != nil {
			if isUnavailable(err) {
				return "", false, redisErr("config get", err)
			}
			warnings = append(warnings, fmt.Sprintf("cannot read the redis %s (%v): check it by hand, or %s", key, err, consequence))
			return "", false, nil
		}
		v, ok := res[key]
		if !ok {
			warnings = append(warnings, fmt.Sprintf("redis did not report its %s: check it by hand, or %s", key, consequence))
		}
		return v, ok, nil
	}
	policy, ok, err := get("maxmemory-policy")
	if err != nil {
		return nil, err
	}
	if ok && policy != "noeviction" {
		warnings = append(warnings, fmt.Sprintf("redis maxmemory-policy is %s, not noeviction: committed submissions may be evicted and their retries certified twice", policy))
	}
	aof, ok, err := get("appendonly")
	if err != nil {
		return nil, err
	}
	if ok && aof != "yes" {
		save, _, err := get("save")
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(save) == "" {
			warnings = append(warnings, "redis persists nothing (appendonly no, no save points): a restart of redis forgets every committed submission, and their retries are certified twice; set appendonly yes")
		} else {
			warnings = append(warnings, "redis appendonly is no: a restart of redis loses the commits since its last snapshot, and their retries are certified twice; set appendonly yes")
		}
	}
	return warnings, nil
}

// redisErr wraps err, with ErrUnavailable when the store could not answer.
func redisErr(op string, err error) error {
	if isUnavailable(err) {
		return fmt.Errorf("%w: redis %s: %w", ErrUnavailable, op, err)
	}
	return fmt.Errorf("dedup: redis %s: %w", op, err)
}

// isUnavailable tells errors of reachability (no reply, or a server that
// cannot serve now) from replies that reveal a bug (wrong type, bad script).
func isUnavailable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		// Not a reply from the server: network, timeout, closed pool.
		return true
	}
	if redis.IsLoadingError(err) || redis.IsReadOnlyError(err) || redis.IsClusterDownError(err) ||
		redis.IsTryAgainError(err) || redis.IsMasterDownError(err) || redis.IsMaxClientsError(err) ||
		redis.IsOOMError(err) || redis.IsNoReplicasError(err) {
		return true
	}
	return strings.HasPrefix(err.Error(), "BUSY")
}
