"""The service fixtures give each test a real service of its own."""

from __future__ import annotations

import psycopg

from tests.brokers import BrokerEndpoint
from tests.mqtt_client import TestClient


def test_postgres_url_points_at_a_fresh_schema_of_this_test(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        assert schema[0].startswith("test_")
        conn.execute("CREATE TABLE probe (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO probe VALUES (1)")
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema[0],),
        ).fetchall()
    assert tables == [("probe",)]


def test_each_broker_listens_on_its_own_port(broker: BrokerEndpoint, topic_prefix: str) -> None:
    assert broker.port != 1883
    with TestClient(broker) as client:
        client.subscribe(f"{topic_prefix}/#")
        client.publish(f"{topic_prefix}/ping", b"pong")
        assert client.receive().payload == b"pong"
