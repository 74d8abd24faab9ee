"""Flower ClientApp: benign clients and backdoor attackers."""
