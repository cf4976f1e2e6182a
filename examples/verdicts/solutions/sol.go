package main

import (
	"fmt"
	"sync"
)

func main() {
	var mode string
	fmt.Scan(&mode)
	switch mode {
	case "ok":
		fmt.Println(42)
	case "wa":
		fmt.Println(41)
	case "tle":
		n := 0
		for {
			n++
		}
	case "mle":
		var kept [][]byte
		for { // a byte per page commits it: writing every byte could use up the CPU limit first
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			kept = append(kept, b)
		}
	case "re":
		panic("crash")
	case "threads":
		var wg sync.WaitGroup
		halves := make([]int, 2)
		for i := range halves {
			wg.Add(1)
			go func(i int) { defer wg.Done(); halves[i] = 21 }(i)
		}
		wg.Wait()
		fmt.Println(halves[0] + halves[1])
	}
}
