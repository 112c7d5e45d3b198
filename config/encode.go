package config

import (
	"bytes"
	"fmt"
	"strings"
)

// Marshal writes c as a configuration file: every section and every key
// with its value and a comment, so operators see every setting and its
// default in one place. Load(Marshal(c)) gives c back (relative paths
// resolved against the file's folder).
func Marshal(c *Config) []byte {
	var b bytes.Buffer
	b.WriteString("# pecgw configuration. Every key is written with its default (or the value\n")
	b.WriteString("# chosen at init); docs/configuration.md describes them. Relative paths are\n")
	b.WriteString("# resolved against the folder of this file.\n")
	def := Default()
	defFields := def.fields()
	fields := c.fields()
	for _, s := range sections {
		fmt.Fprintf(&b, "\n# %s\n[%s]\n", s.doc, s.name)
		for i, f := range fields {
			if sectionOf(f.key) != s.name {
				continue
			}
			comment := f.doc
			if d := defFields[i].val.toml(); d != f.val.toml() && f.key != "provider.name" && f.key != "provider.domains" {
				comment += " Default " + d + "."
			}
			fmt.Fprintf(&b, "# %s\n%s = %s\n", comment, strings.TrimPrefix(f.key, s.name+"."), f.val.toml())
		}
	}
	return b.Bytes()
}

// sectionOf is the table of a dotted key: all but its last part.
func sectionOf(key string) string {
	return key[:strings.LastIndexByte(key, '.')]
}
