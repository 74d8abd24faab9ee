"""Flower ServerApp, FedAvg strategies and the server's training and cleansing phases."""
