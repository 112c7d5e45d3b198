module github.com/pecgw/pecgw

go 1.26

require (
	github.com/emersion/go-message v0.18.2
	github.com/smallstep/pkcs7 v0.2.3
	golang.org/x/net v0.58.0
)

require golang.org/x/text v0.41.0 // indirect
