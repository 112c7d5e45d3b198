package gateway

import (
	"sort"
	"sync"
)

// Transactions are the acceptance transactions this process drives or
// still owes something: who is working on each (one driver at a time: the
// session, a retry, the periodic run), and the state of those left
// waiting (a receipt owed, an outcome the operator must decide, a commit
// owed, an action to redo). It is memory only: after a restart,
// Reconcile rebuilds it from the log, which holds every state that
// matters (the table's records). Safe for concurrent use.
type Transactions struct {
	mu   sync.Mutex
	txs  map[string]*txn
	busy map[string]bool
}

// NewTransactions returns an empty set, for an Acceptor.
func NewTransactions() *Transactions {
	return &Transactions{txs: map[string]*txn{}, busy: map[string]bool{}}
}

// begin registers t, driven by the caller until end.
func (b *Transactions) begin(t *txn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.txs[t.id], b.busy[t.id] = t, true
}

// take gives the caller the transaction id to drive, until end; nil when
// it is not known here or another driver has it.
func (b *Transactions) take(id string) *txn {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.txs[id]
	if t == nil || b.busy[id] {
		return nil
	}
	b.busy[id] = true
	return t
}

// end hands t back: it is kept while it waits for something, forgotten
// once it is over.
func (b *Transactions) end(t *txn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.busy, t.id)
	if t.state.Terminal() && !t.unsettled || t.state == stNew {
		delete(b.txs, t.id)
	}
}

// keep registers t, left by a driver that is done with it (Reconcile),
// when it waits for something.
func (b *Transactions) keep(t *txn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !(t.state.Terminal() && !t.unsettled || t.state == stNew) {
		b.txs[t.id] = t
	}
}

// waiting lists the transactions kept, in identifier order (their time).
func (b *Transactions) waiting() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ids := make([]string, 0, len(b.txs))
	for id := range b.txs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
