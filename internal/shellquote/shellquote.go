// Package shellquote renders argument vectors for people to read and paste
// into a shell: benchmark reports print the exact command lines they ran.
package shellquote

import (
	"strconv"
	"strings"
)

// Join returns argv as one line, each argument that is empty or holds a
// space, tab, quote, backslash, dollar or comma in Go (and shell) double
// quotes.
func Join(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\"'\\$,") {
			q[i] = strconv.Quote(a)
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}
