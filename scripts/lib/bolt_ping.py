"""Readiness probe: runs `RETURN 1` over Bolt and prints the server agent.

Reads NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD from the environment. Exit 0 only when the
server answered 1. Used by scripts/dev.sh before anything else may use the graph server.
"""
import os
import sys

from neo4j import GraphDatabase

uri = os.environ["NEO4J_URI"]
auth = (os.environ["NEO4J_USER"], os.environ["NEO4J_PASSWORD"])
try:
    with GraphDatabase.driver(uri, auth=auth, connection_timeout=3) as driver:
        with driver.session(database=os.environ.get("NEO4J_DATABASE", "neo4j")) as session:
            result = session.run("RETURN 1 AS x")
            value = result.single()["x"]
            agent = result.consume().server.agent
    if value != 1:
        sys.exit(f"RETURN 1 answered {value!r}")
    print(agent)
except Exception as e:  # noqa: BLE001 - any failure means "not ready"
    sys.exit(f"not ready: {type(e).__name__}: {e}")
