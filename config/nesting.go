package config

import "bytes"

// Limits on what Parse hands to the TOML decoder. A configuration is a
// few kilobytes; the decoder's time grows much faster than linearly with
// the nesting of inline tables (5000 levels take seconds), so a garbled
// or hostile file could stall check-config and the daemon's start.
const (
	maxFileSize = 1 << 20
	maxNesting  = 64
)

// tooDeep returns the line and column of the first '[' or '{' that
// opens an array or inline table nested deeper than limit, or ok false.
// Strings and comments are skipped, so brackets inside them do not count.
func tooDeep(data []byte, limit int) (line, col int, ok bool) {
	depth := 0
	line, lineStart := 1, 0
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '\n':
			line, lineStart = line+1, i+1
		case '#':
			for i+1 < len(data) && data[i+1] != '\n' {
				i++
			}
		case '"', '\'':
			delim := []byte{c}
			if bytes.HasPrefix(data[i:], []byte{c, c, c}) {
				delim = []byte{c, c, c}
			}
			j := i + len(delim)
			for j < len(data) && !bytes.HasPrefix(data[j:], delim) {
				if data[j] == '\\' && c == '"' {
					j++
				}
				if j < len(data) && data[j] == '\n' {
					line, lineStart = line+1, j+1
				}
				j++
			}
			i = j + len(delim) - 1
		case '[', '{':
			depth++
			if depth > limit {
				return line, i - lineStart + 1, true
			}
		case ']', '}':
			if depth > 0 {
				depth--
			}
		}
	}
	return 0, 0, false
}
