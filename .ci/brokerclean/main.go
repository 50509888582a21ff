// Command brokerclean deletes the exchange and queues a script declared on
// the broker at AMQP_URL (rabbitmqctl cannot delete exchanges):
//
//	go run .ci/brokerclean/main.go -exchange NAME QUEUE...
//
// Objects that are already gone are not an error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	exchange := flag.String("exchange", "", "exchange to delete")
	flag.Parse()
	if err := clean(*exchange, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "brokerclean:", err)
		os.Exit(1)
	}
}

func clean(exchange string, queues []string) error {
	url := os.Getenv("AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("warren-brokerclean")
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: props, Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return err
	}
	defer conn.Close()
	var errs []error
	for _, q := range queues {
		errs = append(errs, run(conn, func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(q, false, false, false) // not if-unused, not if-empty, wait
			return err
		}))
	}
	if exchange != "" {
		errs = append(errs, run(conn, func(ch *amqp.Channel) error {
			return ch.ExchangeDelete(exchange, false, false) // not if-unused, wait
		}))
	}
	return errors.Join(errs...)
}

// run gives each deletion its own channel: a failed one closes its channel.
func run(conn *amqp.Connection, f func(*amqp.Channel) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return f(ch)
}
