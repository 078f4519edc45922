// A test sender: N records through fluent-logger-golang with RequestAck and sub-second EventTime.
//
// Usage: sender HOST PORT SENDER_ID COUNT
// Each record is {"request_id": "go-SENDER-I", "sender": SENDER, "seq": I, "body": ...}.
// The logger resends a chunk under the same chunk id until it is acknowledged (its own
// retry loop); a Post that still fails is printed and the program exits 1, because
// posting it again would make a new chunk id (a re-emit), which this sender never does.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: sender HOST PORT SENDER_ID COUNT")
		os.Exit(2)
	}
	port, _ := strconv.Atoi(os.Args[2])
	count, _ := strconv.Atoi(os.Args[4])
	sender := os.Args[3]
	logger, err := fluent.New(fluent.Config{
		FluentHost:         os.Args[1],
		FluentPort:         port,
		RequestAck:         true,
		SubSecondPrecision: true,
		MaxRetry:           40,
		RetryWait:          100,
		MaxRetryWait:       1000,
		Timeout:            3 * time.Second,
		WriteTimeout:       10 * time.Second,
		ReadTimeout:        30 * time.Second,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer logger.Close()
	for i := 0; i < count; i++ {
		record := map[string]interface{}{
			"request_id": fmt.Sprintf("go-%s-%d", sender, i),
			"sender":     sender,
			"seq":        i,
			"prompt":     "What is the capital of France?",
		}
		if err := logger.Post("test.go", record); err != nil {
			fmt.Fprintf(os.Stderr, "post %d failed: %v\n", i, err)
			os.Exit(1)
		}
		if (i+1)%1000 == 0 {
			fmt.Printf("sent %d\n", i+1)
		}
	}
	fmt.Println("done")
}
