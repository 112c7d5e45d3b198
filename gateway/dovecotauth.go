package gateway

import "context"

// DovecotUsers is the Guard's Verifier over a Dovecot client: the
// provider's users, checked by its Dovecot (users.backend = "dovecot").
// It has no Stamper: a password changed in Dovecot ends a cached
// verification at its TTL, or at SIGHUP (docs/configuration.md).
type DovecotUsers struct{ D *Dovecot }

// Verify asks Dovecot, telling it the client's and our addresses and
// whether the connection is over TLS (Dovecot's rip, lip, secured).
func (v DovecotUsers) Verify(ctx context.Context, user, password string, c ClientInfo) (bool, error) {
	info := DovecotInfo{Secured: c.Secured}
	if c.Addr.IsValid() {
		info.ClientIP, info.ClientPort = c.Addr.Addr().Unmap().String(), int(c.Addr.Port())
	}
	if c.Local.IsValid() {
		info.LocalIP, info.LocalPort = c.Local.Addr().Unmap().String(), int(c.Local.Port())
	}
	return v.D.Verify(ctx, user, password, info)
}
