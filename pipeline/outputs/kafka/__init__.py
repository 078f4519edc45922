"""The kafka output: each chunk in one Kafka transaction, with its marker in a state topic."""
