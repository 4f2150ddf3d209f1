"""amqp driver."""
