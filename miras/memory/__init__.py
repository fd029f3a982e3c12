"""The four Miras axes as small pure functions: memory architecture, attentional bias, retention map."""
