"""Security against malicious clients: attacks run inside the compiled round and robust aggregation.

    from fedlab.security import robust, attack, attacker_ids
    strategy = robust(fedavg(), "krum:2")                           # a defense on the server
    strategy = attack(strategy, "alie", attackers=attacker_ids(30, 0.2, seed=0), num_clients=30)
"""
from fedlab.security.attacks import (ATTACKS, Attack, attack, attacker_ids, backdoor_evaluator, default_trigger,
                                     parse_attack, stamp_trigger)
from fedlab.security.defenses import DEFENSES, Defense, check_clients, fltrust, make_defense, robust, root_set

__all__ = ["ATTACKS", "DEFENSES", "Attack", "Defense", "attack", "attacker_ids", "backdoor_evaluator",
           "check_clients", "default_trigger", "fltrust", "make_defense", "parse_attack", "robust", "root_set", "stamp_trigger"]
