package pid1

import "strings"

// CmdlineValue returns the value of key=value on a kernel command line
// (/proc/cmdline), the last one winning as in the kernel; ok is false when
// the key is absent.
func CmdlineValue(cmdline, key string) (value string, ok bool) {
	for _, f := range strings.Fields(cmdline) {
		k, v, has := strings.Cut(f, "=")
		if has && k == key {
			value, ok = v, true
		}
	}
	return value, ok
}
