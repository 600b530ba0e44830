"""The Prefect flows that wire the stages into a DAG (pipeline), and the helpers that start and wait for a Prefect
server. The only package but rest.cli that imports Prefect.
"""
