// Package pec builds and inspects the messages of Posta Elettronica
// Certificata (RFC 6109; DM 2 novembre 2005): the time reference, the PEC
// identifier, the formal checks of a submission, daticert.xml, the transport
// envelope (busta di trasporto), the acceptance receipt (ricevuta di
// accettazione) and the non-acceptance notice (avviso di non accettazione).
//
// Everything here is a pure function: no I/O, no clock and no randomness of
// its own. The caller passes the instant, the random source and the
// directory in, so every artefact is reproducible and golden-testable.
package pec
