module github.com/pecgw/pecgw

go 1.26

require (
	github.com/emersion/go-message v0.18.2
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6
	github.com/emersion/go-smtp v0.25.1
	github.com/smallstep/pkcs7 v0.2.3
	golang.org/x/net v0.58.0
)

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	golang.org/x/crypto v0.55.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.41.0 // indirect
)
