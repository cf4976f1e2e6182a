// Allocates and touches N MiB (the first argument) in 16 MiB slices, then prints "ok N".
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	kept := make([][]byte, 0)
	for i := 0; i < n/16; i++ {
		b := make([]byte, 16<<20)
		for j := range b {
			b[j] = 1
		}
		kept = append(kept, b)
	}
	fmt.Println("ok", len(kept)*16)
}
