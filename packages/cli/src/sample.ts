/** The sample database of the demo and the tests: the features a real schema has that trip migrations. */
export const SAMPLE_SCHEMA = `
CREATE TABLE customers (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email text NOT NULL UNIQUE,
  name text NOT NULL,
  notes text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers (id),
  amount numeric(12, 2) NOT NULL,
  amount_with_tax numeric(12, 2) GENERATED ALWAYS AS (amount * 1.2) STORED,
  status text NOT NULL DEFAULT 'new',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
-- A sequence no column owns, used by a default: synced at cutover all the same.
CREATE SEQUENCE invoice_numbers START 1000;
CREATE TABLE invoices (
  id bigint PRIMARY KEY DEFAULT nextval('invoice_numbers'),
  order_id bigint NOT NULL REFERENCES orders (id),
  pdf bytea
);
CREATE TABLE events (
  id bigserial,
  at timestamptz NOT NULL,
  kind text NOT NULL,
  body jsonb,
  PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX events_kind_idx ON events (kind);
-- No primary key: replicates through REPLICA IDENTITY FULL.
CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), actor text, action text);
ALTER TABLE audit_log REPLICA IDENTITY FULL;
-- What the live writer appends to.
CREATE TABLE writes (id bigserial PRIMARY KEY, writer text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL DEFAULT now());
`;

/** The sample schema as a source of PostgreSQL `major` can hold it: before 12, orders has no generated column. */
export function sampleSchema(major: number): string {
  return major >= 12 ? SAMPLE_SCHEMA : SAMPLE_SCHEMA.replace(' GENERATED ALWAYS AS (amount * 1.2) STORED', '');
}

/** Rows for the sample schema; `rows` orders, with customers, invoices and events in proportion. */
export function sampleData(rows: number): string {
  const customers = Math.max(10, Math.round(rows / 10));
  return `
INSERT INTO customers (email, name, notes)
  SELECT 'c' || g || '@example.com', 'Customer ' || g, CASE WHEN g % 7 = 0 THEN repeat('long note ', 300) END
  FROM generate_series(1, ${customers}) g;
INSERT INTO orders (customer_id, amount, status)
  SELECT 1 + (g % ${customers}), (g % 1000) / 10.0, CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'new' END
  FROM generate_series(1, ${rows}) g;
INSERT INTO invoices (order_id, pdf) SELECT id, decode(md5(id::text), 'hex') FROM orders WHERE id % 4 = 0;
INSERT INTO events (at, kind, body)
  SELECT timestamptz '2025-06-01' + ((g % 500000) || ' minutes')::interval, 'k' || (g % 5), jsonb_build_object('n', g)
  FROM generate_series(1, ${rows}) g;
INSERT INTO audit_log (actor, action) SELECT 'u' || (g % 20), 'seed' FROM generate_series(1, ${Math.round(rows / 5)}) g;
ANALYZE;
`;
}
