package rules

import (
	"fmt"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/config"
)

// orderBody is a JSON order of about size bytes: a few fields and as many
// line items as it takes.
func orderBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"id":"ord_8f2a","amount":150000,"currency":"EUR","customer":{"id":"cus_19","country":"DE"},"lines":[`)
	for i := 0; b.Len() < size-40; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sku":"SKU-%05d","qty":%d,"price":%d.5}`, i, i%7+1, i%90+10)
	}
	b.WriteString(`],"status":"completed"}`)
	return []byte(b.String())
}

// BenchmarkFilter measures what a typical filter costs per event, from the
// raw body to the decision: parsing the body is most of it.
func BenchmarkFilter(b *testing.B) {
	p, err := Compile(config.Subscription{Name: "s",
		Filter: `type == "order.completed" && data.amount >= 100000 && data.customer.country in ["DE", "FR"]`})
	if err != nil {
		b.Fatal(err)
	}
	headers := amqp.Table{"tenant": "acme"}
	for _, size := range []int{256, 100 << 10} {
		ev := order(string(orderBody(size)))
		b.Run(fmt.Sprintf("body=%dB", len(ev.Body)), func(b *testing.B) {
			b.SetBytes(int64(len(ev.Body)))
			b.ReportAllocs()
			for b.Loop() {
				ok, err := p.Wants(NewInput(ev, headers))
				if !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
	b.Run("no-data", func(b *testing.B) {
		p, err := Compile(config.Subscription{Name: "s", Filter: `type.startsWith("order.") && headers.tenant == "acme"`})
		if err != nil {
			b.Fatal(err)
		}
		ev := order(string(orderBody(100 << 10)))
		b.ReportAllocs()
		for b.Loop() {
			if ok, err := p.Wants(NewInput(ev, headers)); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}

// BenchmarkTransform measures a transform picking three fields, JSON out.
func BenchmarkTransform(b *testing.B) {
	p, err := Compile(config.Subscription{Name: "s",
		Transform: `{"order": data.id, "amount": data.amount, "country": data.customer.country}`})
	if err != nil {
		b.Fatal(err)
	}
	ev := order(string(orderBody(256)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := p.Transform(NewInput(ev, nil)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCostLimit measures how long a runaway expression runs before
// its cost limit stops it.
func BenchmarkCostLimit(b *testing.B) {
	list := "[" + strings.Repeat("0,", 31) + "0]"
	p, err := Compile(config.Subscription{Name: "s",
		Filter: list + ".all(a, " + list + ".all(b, " + list + ".all(c, " + list + ".all(d, a + b + c + d >= 0))))"})
	if err != nil {
		b.Fatal(err)
	}
	ev := order(`{}`)
	for b.Loop() {
		if _, err := p.Wants(NewInput(ev, nil)); err == nil {
			b.Fatal("no cost limit error")
		}
	}
}
