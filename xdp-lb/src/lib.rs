//! Load-balancer control plane: Maglev lookup tables, the service → map plan, and backend health
//! checks. It turns `[[services]]` of the model into operations on the XDP datapath's maps and never
//! touches a socket or a map itself; the appliance applies what it plans.
//!
//! Nothing lives here yet: the load balancer is built in its own issue (XDP L4 load balancer).
