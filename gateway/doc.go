// Package gateway is the SMTP submission service of the access point:
// sessions, authentication, the acceptance transaction, and the one place
// where errors become SMTP replies.
package gateway
