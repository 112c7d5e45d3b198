package logstore

import "strings"

// Records of format 1 (pecgw before the "v" field) carry an acceptance
// transaction's state only in the wording of their detail, which format
// 1 called free text. The log is kept unmodified for 30 months (RFC 6109
// §2.3), so these phrases, the exact ones format 1 wrote, are read here
// and nowhere else, and never change. Records of format 2 are not read
// this way: their detail is for people only.
const (
	v1NotHandedOff        = "transport envelope not handed off"
	v1NotSpooled          = "acceptance receipt not spooled, "
	v1HoldNotTaken        = "dedup hold not taken, "
	v1ReceiptNotDelivered = "transport envelope handed off, acceptance receipt not delivered"
	v1CommitFailed        = "dedup commit failed"
	v1OutcomeUnknown      = "transport envelope hand-off outcome unknown"
	v1NotKept             = "acceptance receipt could not be kept"
	v1OperatorRejected    = "the operator found that the next hop did not receive the transport envelope"
	v1OperatorConfirmed   = "after the operator confirmed that the next hop received the transport envelope"
	v1DeliveredLate       = "acceptance receipt delivered late"
	v1WasThere            = "acceptance receipt found in the sender's mailbox"
	v1Reconciled          = "reconciled after a restart: "
	v1ReconciledCommitted = "reconciled after a restart: envelope and acceptance receipt handed off (committed in the dedup store)"
	v1ReconciledNotFound  = "reconciled after a restart: the envelope was not handed off"
	v1ReconciledUnknown   = "reconciled after a restart: hand-off outcome unknown"
	v1NoReceiptKept       = "no receipt kept"
	v1NoReceipt           = ", receipt delivery not confirmed"
)

// compatV1 reads the transaction fields of a format 1 record from its
// type, its detail and its dedup_key, as pecgw of format 1 did at its
// start (its gateway.txState.add): what it decided from a wording, the
// same state is decided from here.
func compatV1(r *Record) Tx {
	tx := Tx{Dedup: splitV1DedupKey(r.DedupKey)}
	d := r.Detail
	has, starts := func(s string) bool { return strings.Contains(d, s) }, func(s string) bool { return strings.HasPrefix(d, s) }
	set := func(s TxState, c TxCause) { tx.State, tx.Cause = s, c }
	switch r.Type {
	case EventBustaTrasporto, EventAccettazione:
		set(TxWrittenAhead, CauseWritten)
	case EventHandedOff:
		switch {
		case has(v1CommitFailed):
			set(TxCommitOwed, CauseCommitFailed)
		case has(v1NoReceipt):
			// Reconciled without a spooled receipt (no spool configured).
			set(TxReceiptLost, CauseReceiptLost)
		case has(v1OperatorConfirmed):
			set(TxReceiptOut, CauseOperatorConfirmed)
		case starts(v1DeliveredLate), starts(v1WasThere):
			set(TxReceiptOut, CauseRedelivered)
		case starts(v1ReconciledCommitted):
			set(TxReceiptOut, CauseFoundCommitted)
		case starts(v1Reconciled):
			set(TxReceiptOut, CauseFoundOut)
		default:
			set(TxReceiptOut, CauseReceiptDelivered)
		}
	case EventAborted:
		switch {
		case starts(v1ReceiptNotDelivered):
			set(TxReceiptOwed, CauseReceiptFailed)
		case starts(v1OperatorRejected):
			set(TxNotHandedOff, CauseOperatorRejected)
		case starts(v1ReconciledNotFound):
			set(TxNotHandedOff, CauseFoundNotOut)
		case starts(v1NotSpooled), starts(v1HoldNotTaken):
			set(TxNotHandedOff, CauseNotPrepared)
		case has(v1NotHandedOff):
			set(TxNotHandedOff, CauseEnvelopeFailed)
		case starts(v1OutcomeUnknown) && has(v1NotKept), starts(v1ReconciledUnknown) && has(v1NoReceiptKept):
			// Format 1 remembered the submission with this identifier:
			// nothing was kept for the operator to decide on.
			set(TxReceiptLost, CauseReceiptLost)
		case starts(v1OutcomeUnknown):
			set(TxOutcomeUnknown, CauseEnvelopeUnknown)
		case starts(v1ReconciledUnknown):
			set(TxOutcomeUnknown, CauseFoundUnknown)
		}
	}
	return tx
}
