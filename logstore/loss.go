package logstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// AcceptLoss lets a log behind its witnesses be written again, once the
// operator has found that the missing records cannot be restored (the
// volume lost, no backup). It writes a signed checkpoint whose detail
// states the loss (the range, each witnessed head, the reason given)
// and then sets every witness to that checkpoint. The seqs of the lost
// records are given again to new records: a receipt that names one of
// them (its log position, docs/formats.md) carries the hash of the lost
// record, not of the new one, and this checkpoint is the record of why.
//
// It returns what was found behind; nothing is written when the log is
// behind no witness.
func AcceptLoss(o Options, reason string) ([]*BehindError, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, errors.New("log: accept-loss needs a reason (who found what, when)")
	}
	ws := o.Witnesses
	o.Witnesses = nil
	l, err := Open(o)
	if err != nil {
		return nil, err
	}
	var behind []*BehindError
	var notes []string
	for _, w := range ws {
		h, err := loadHead(w)
		if errors.Is(err, ErrNoWitness) {
			continue
		}
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("%w: accept-loss reads every witness first", err)
		}
		l.mu.Lock() // the writer is idle: no record was appended
		seq, head := l.seq, l.head
		l.mu.Unlock()
		var be *BehindError
		if err := CompareWitness(o.Dir, seq, head, w, h); errors.As(err, &be) {
			behind = append(behind, be)
			notes = append(notes, fmt.Sprintf("%s held seq %d hash %s (%s)", be.Witness, be.Head.Seq, be.Head.Hash, be.HeadTime))
		} else if err != nil {
			l.Close()
			return nil, err
		}
	}
	if len(behind) == 0 {
		return nil, l.Close()
	}
	first := behind[0]
	lost := fmt.Sprintf("records %d..%d", first.LogSeq+1, first.Head.Seq)
	if first.Rewritten {
		lost = fmt.Sprintf("the records from seq %d on", first.Head.Seq)
	}
	ck, err := l.appendOwn(&Record{Type: EventCheckpoint,
		Detail: fmt.Sprintf("loss accepted by the operator: %s lost (the log ended at seq %d, hash %s; %s); their seqs are given again from here; reason: %s",
			lost, first.LogSeq, first.LogHash, strings.Join(notes, "; "), reason)}, true)
	if err != nil {
		l.Close()
		return behind, fmt.Errorf("log: the loss record: %w", err)
	}
	line, err := Encode(ck)
	if err != nil {
		l.Close()
		return behind, err
	}
	if err := l.Close(); err != nil {
		return behind, err
	}
	h := NewWitnessHead(ck.Seq, line)
	for _, w := range ws {
		ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
		err := w.Reset(ctx, h)
		cancel()
		if err != nil {
			return behind, fmt.Errorf("the loss is recorded at seq %d, but %w: set it again with accept-loss", ck.Seq, err)
		}
	}
	return behind, nil
}
